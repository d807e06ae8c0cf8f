"""Health checks of the diagnosis note, each with a verdict; their command is
`python -m txt2img_jax.health` and docs/health.md says what each check does,
its thresholds and why.

overfit ("小批过拟合"): train a copy of the config on the first `subset`
train examples with every group's learning rate doubled, then require
  1. loss_flow to fall by more than 20% (first logged value -> mean of the
     last three logged values), the note's criterion, AND
  2. the text-only reconstruction at t = 0 to beat the subset's mean image:
     rel = mse(generate(caption), image) / mse(mean_image, image) < 0.8.
Criterion 2 exists because on the noise-free path x_t = (1 - t) z_text +
t x1 the image leaks into the network's input for every t > 0, and the
-z_text part of the target v = x1 - z_text is learnable from the text alone,
so loss_flow falls by > 20% even when the captions say nothing about the
images (`--break_targets` shows it).

latents ("VAE 一致性"): the standardised latents of the training encode path
have per-channel mean ~ 0 and std ~ 1, the trainer and the sampler use the
same encode / decode path, decode(unstandardise(standardise(sample(encode(x)))))
reconstructs x, and the reparameterisation noise is small next to the
latent scale.

mosaic: a trained run's samples for held-out captions are as smooth as its training images:
their blockiness (token-grid edges against the inside of tokens, `evaluation/blockiness.py`) at most
1.5x the training images'. The seed's failure, seen without knowing what the images show.

The checks live in `overfit`, `latents` and `mosaic` (each returns a `result.Result`); this
package's face gathers their public API, and `txt2img_jax/health.py` is their command line.
Imports run one way: health_checks -> overfit, latents, mosaic -> result.
"""

from __future__ import annotations

# The public API, gathered in one namespace.
# pylint: disable=unused-import
from txt2img_jax.health_checks.latents import (
    DEFAULT_LATENT_NUM,
    MAX_ABS_MEAN,
    MAX_NOISE_RATIO,
    MAX_RECON_ABS,
    MAX_RECON_MEAN,
    MAX_STD_DEV,
    latents_table,
    run_latents,
)
from txt2img_jax.health_checks.overfit import (
    DEFAULT_RECON,
    DEFAULT_STEPS,
    LOG_POINTS,
    LR_FACTOR,
    MAX_REL,
    MIN_FALL,
    NOTE_STEPS,
    NOTE_SUBSET,
    _deranged,
    broken_targets,
    default_workdir,
    loss_fall,
    overfit_config,
    plot_overfit,
    read_loss_curve,
    run_overfit,
    text_only_reconstruction,
)
from txt2img_jax.health_checks.mosaic import DEFAULT_MOSAIC_NUM, PROBES, run_mosaic
from txt2img_jax.health_checks.result import Result

# pylint: enable=unused-import
