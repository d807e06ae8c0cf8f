"""Every threshold and lever of `python -m txt2img_jax.diagnose`, and the metric names it reads.

Kept apart from the code that uses them so that the numbers a person tunes sit on one page.
"""

import re

from txt2img_jax.evaluation import blockiness
from txt2img_jax.utils import metric_names

# --------------------------------------------------------------------------------------------
# Thresholds. Each is a judgement; docs/diagnostics.md says how it was chosen.
# --------------------------------------------------------------------------------------------

# The note reads a trend after 3–5k iterations of a change ("3–5k iters 就能看出趋势"), so the
# default window over which "is it still falling?" is asked is 5k training steps.
DEFAULT_WINDOW = 5000
# Below this many logged points in the window a fitted slope is noise; the trend is skipped.
MIN_TREND_POINTS = 6
# Flow loss falling by less than 2% over the window (fitted line and end means both) is a
# plateau. The note's run sat at 0.92–0.93 for tens of thousands of steps (≈1% per window),
# while a run that still learns shape loses several % per 5k steps.
PLATEAU_REL_CHANGE = 0.02
# Rising by more than 5% over a window is not a plateau but a run going wrong.
RISING_REL_CHANGE = 0.05
# Actual LR below 0.2× the configured base LR is the note's "chronic plateau" zone: it saw
# 2.5e-7 against 2.5e-6 (0.1×). A cosine decay spends its last ~15% of steps below 0.2×,
# so a healthy run only trips this at the very end of its schedule.
LR_FAR_BELOW_RATIO = 0.2
# An LR that rose by more than 5% across the window is still warming up, not decayed.
LR_WARMUP_RISE = 1.05
# KL per latent dimension (nats) below which the text posterior carries almost nothing: a dim
# with mu = 0, var = 0.65 has KL 0.04; |mu| = 1, var = 1 has 0.5. The note: 70 / 4096 ≈ 0.017.
KL_PER_DIM_COLLAPSED = 0.05
# Posterior-statistics test of the same collapse, for when latent_dims is unknown: every
# log_var close to 0 (var ∈ [0.61, 1.11]) and every mean within ±1.5. The note:
# log_var ∈ [−0.44, 0.02], mu ∈ [−1.15, 1.28].
LOGVAR_COLLAPSED_RANGE = (-0.5, 0.1)
MU_COLLAPSED_ABS = 1.5
# ‖z_text‖/‖x1‖ outside [0.5, 2]: the flow has to rescale the latent by more than 2× on its
# way, which the velocity target then dominates. The note's run had 0.98–0.99.
NORM_RATIO_RANGE = (0.5, 2.0)
# A t bucket is stuck when it falls by less than 1% over the window while the median of the
# other buckets falls by more than 3%.
BUCKET_STUCK_REL = 0.01
BUCKET_OTHERS_FALLING_REL = 0.03
# A bucket whose window-mean loss is more than 3× the median of the others. Some slope across t
# is normal (the text end, t≈0, is the hardest), so only a large factor is flagged.
BUCKET_FAR_ABOVE = 3.0

# Samples whose blockiness (boundary over interior gradient energy on the token grid, relative
# to the real images') is above 1.5× are a mosaic: real images score 1 ± 0.1, real images cut
# into token tiles of shuffled brightness ≥ 3 (tests/test_blockiness.py), and the folder
# recipe's blocky digits ~1.7-2.3 (docs/own_images.md).
MOSAIC_BLOCKINESS = blockiness.MOSAIC_BLOCKINESS
# Blockiness up by a quarter from its lowest evaluation while the validation flow loss fell
# is the seed's signature, flagged even below MOSAIC_BLOCKINESS: the loss says "improving"
# while the images come apart.
MOSAIC_RISE = 1.25

# The KID of the samples against real images (val/kid_<net>) rising this many times above its
# lowest earlier value (and by more than twice its subset std) while val/flow falls: the
# samples leave the data while the loss says improving. On the digits with velocity
# prediction KID went 0.013 -> 0.023 over 450 steps while val/flow fell 0.30 -> 0.12.
DISTANCE_RISE = 1.5

# Levers: the config switch that addresses each flag. Kept in one place so that a renamed
# config field is changed once.
LEVER_LR_RESTART = (
    "restart the LR: --config.init_from=W with configs/restart.py, "
    "--config.head.kind=<W's head> and --config.flow.predict=<W's> (new "
    "cosine cycle, peak 2× base, floor = "
    "the LR reached now; the note: T0=20k, eta_min=2.5e-7)"
)
LEVER_TIME_SAMPLING = (
    "time sampling: configs/logsnr.py (uniform logSNR λ∈[−2, 6], "
    "curriculum α>0.8 for the first 30k steps)"
)
# On the noise-free path the text end (t ~ 0) is where the image is formed
# from z_text alone and the note's high-signal advice never trains it
# (docs/recipes.md), so a stuck text end gets the opposite lever.
LEVER_TEXT_END = (
    "more draws at the text end of the path: configs/restart.py's "
    "time.sampler (curriculum from t in [0, 0.15]); not the note's "
    "alpha > 0.8, which never trains t < 0.8"
)

LEVER_TEXT_SIDE = (
    "contrast z_text with the image latent itself: "
    "--config.loss.clip_target=latent (the recipe's; it more than doubled "
    "object accuracy in docs/recipes.md); "
    "lower β_KL on the summed KL: --config.loss.kl_weight (the recipe's "
    "1e-4); contrastive weight ×2: --config.loss.clip_weight=2.0; text head "
    "--config.head.kind=token_transformer (best in docs/heads.md; the note's "
    "spatial grid_query head drew less there)"
)
LEVER_NORMS = (
    "check latent standardisation (per-channel shift/scale stored with the run) "
    "and β_KL: --config.loss.kl_weight"
)
LEVER_NONFINITE = (
    "gradient clipping --config.optim.grad_clip=1.0, a lower peak LR, and the "
    "batch at the failing step"
)
LEVER_RISING = "lower the peak LR or restart from the last good checkpoint"
LEVER_DISTANCE = (
    "look at the sample grids of the evaluations around the KID minimum; in pixel-like "
    "latents predict the image, not the velocity: --config.flow.predict=image "
    "(configs/folder.py); or stop near the minimum (fewer total_steps)"
)
LEVER_MOSAIC = (
    "predict the image, not the velocity: --config.flow.predict=image; "
    "decode each latent cell from neighbouring tokens too: "
    "--config.flow.out_head=overlap (or conv); smaller tokens (flow.patch_size, "
    "autoencoder.factor) at a higher cost per step"
)

# Names as the trainer logs them.
LOSS_COMPONENTS = metric_names.LOSS_TERMS
BUCKET_RE = re.compile(r"^train/loss_flow_bucket/(\d+)$")
