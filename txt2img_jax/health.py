"""Health checks of the diagnosis note, as commands with a verdict.

  python -m txt2img_jax.health overfit --config=configs/restart.py \
      [--workdir=W] [--steps=450] [--subset=512] [--break_targets]
  python -m txt2img_jax.health latents --config=configs/restart.py \
      [--workdir=W] [--num=1024] [--stats_scale=3]
  python -m txt2img_jax.health mosaic --workdir=W [--num=64]

Exit code 0 = PASS, 1 = FAIL, 2 = usage error. See docs/health.md for what each check does,
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
their blockiness (token-grid edges against the inside of tokens, `blockiness.py`) at most
1.5x the training images'. The seed's failure, seen without knowing what the images show.

The checks live in `health_overfit`, `health_latents` and `health_mosaic` (each returns a
`health_result.Result`); this module is their command line and gathers their public API.
Imports run one way: health -> health_overfit, health_latents, health_mosaic -> health_result.
"""

from __future__ import annotations

import os
import sys

# The public API, gathered in one namespace.
# pylint: disable=unused-import
from txt2img_jax.health_latents import (
    DEFAULT_LATENT_NUM, MAX_ABS_MEAN, MAX_NOISE_RATIO, MAX_RECON_ABS, MAX_RECON_MEAN,
    MAX_STD_DEV, latents_table, run_latents)
from txt2img_jax.health_overfit import (
    DEFAULT_RECON, DEFAULT_STEPS, LOG_POINTS, LR_FACTOR, MAX_REL, MIN_FALL, NOTE_STEPS,
    NOTE_SUBSET, _deranged, broken_targets, loss_fall, overfit_config, plot_overfit,
    read_loss_curve, run_overfit, text_only_reconstruction)
from txt2img_jax.health_mosaic import DEFAULT_MOSAIC_NUM, PROBES, run_mosaic
from txt2img_jax.health_result import Result
# pylint: enable=unused-import


# =============================================================================
# Command line
# =============================================================================

CHECKS = ("overfit", "latents", "mosaic")


def define_flags():
  """Flags of this command only (train.py's entry point defines its own in
  the same process elsewhere)."""
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Recipe file, e.g. configs/restart.py[:tiny].",
      lock_config=False)
  flags.DEFINE_string("workdir", None, "overfit: a new or empty directory, or "
                      "one an earlier check made (wiped first; default "
                      "workdirs/health_overfit_<name>). "
                      "latents: a run whose latent_stats.json to check "
                      "(default: compute the statistics).")
  flags.DEFINE_integer("steps", DEFAULT_STEPS, "overfit: train steps (the "
                       "note's 2-3k, scaled to ~5 min of this CPU).")
  flags.DEFINE_integer("subset", NOTE_SUBSET, "overfit: train examples "
                       "(clamped to data.num_train).")
  flags.DEFINE_float("lr_factor", LR_FACTOR, "overfit: LR multiplier.")
  flags.DEFINE_integer("recon_num", DEFAULT_RECON, "overfit: captions "
                       "regenerated for the text-only reconstruction.")
  flags.DEFINE_bool("break_targets", False, "overfit, test only: give each "
                    "caption another example's image (must FAIL).")
  flags.DEFINE_integer("num", None, "latents: images per split (default "
                       f"{DEFAULT_LATENT_NUM}); mosaic: held-out captions drawn "
                       f"(default {DEFAULT_MOSAIC_NUM}).")
  flags.DEFINE_enum("probe", "", PROBES, "mosaic, test only: score the held-out "
                    "images themselves (real, must PASS) or cut into token tiles "
                    "(tiled, must FAIL) instead of the run's samples.")
  flags.DEFINE_float("stats_scale", 1.0, "latents, test only: multiply the "
                     "latent scale by this (3 must FAIL).")


def main(argv):
  from absl import app
  from absl import flags
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in CHECKS:
    raise app.UsageError(f"give one check: {' | '.join(CHECKS)} "
                         f"(got {argv[1:]})", exitcode=2)
  from txt2img_jax import reporting
  reporting.quiet_orbax()
  config = f.config
  if config is None and argv[1] != "mosaic":
    raise app.UsageError(f"{argv[1]} needs --config=FILE", exitcode=2)
  if argv[1] == "overfit":
    result = run_overfit(config, f.workdir, f.steps, f.subset,
                         f.break_targets, lr_factor=f.lr_factor,
                         recon_num=f.recon_num)
    n = result.numbers
    print(f"overfit of {n['config']}: {n['steps']} steps, {n['subset']} "
          f"examples, batch {n['batch_size']}, lr x {n['lr_factor']}"
          f"{', BROKEN TARGETS' if n['break_targets'] else ''}")
    print(f"  loss_flow: first {n['loss_flow_first']:.4f}, last-3 mean "
          f"{n['loss_flow_last3']:.4f}, fall {100 * n['fall']:.1f}%")
    print(f"  text-only reconstruction on {n['recon_num']} training captions:"
          f" mse {n['recon_mse']:.5f} vs mean image {n['mean_image_mse']:.5f}"
          f" -> rel {n['rel']:.3f}")
    wd = os.path.abspath(f.workdir or os.path.join(
        "workdirs", f"health_overfit_{config.name}"))
    print(f"  wrote {os.path.join(wd, 'overfit.png')}, overfit.json")
  elif argv[1] == "latents":
    result = run_latents(config, f.workdir, f.stats_scale,
                         f.num or DEFAULT_LATENT_NUM)
    print(latents_table(result))
  else:
    result = run_mosaic(f.workdir, f.num or DEFAULT_MOSAIC_NUM, f.probe)
    print(f"wrote {os.path.join(os.path.abspath(f.workdir), 'mosaic.png')}, "
          "mosaic.json")
  print(result.verdict)
  sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
  from txt2img_jax import cli
  define_flags()
  cli.run(main)
