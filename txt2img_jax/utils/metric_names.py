"""The names of the CrossFlow objective's logged terms, in one place: the
objective writes them, the reporter smooths them, `diagnose` reads them.
(No jax here: `diagnose` runs on logs alone.)"""

# aux holds loss_<term> (weighted; they add up to `loss`) and <term>_raw.
LOSS_TERMS = ("flow", "kl", "clip", "tv", "lpips", "align")
# The values the reporter smooths with an EMA on the host.
EMA_KEYS = (
    "loss",
    "loss_flow",
    "loss_kl",
    "kl_raw",
    "loss_clip",
    "clip_raw",
    "loss_tv",
    "loss_lpips",
    "loss_align",
)
