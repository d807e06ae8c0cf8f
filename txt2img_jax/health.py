"""The health checks (`txt2img_jax/health_checks/`) from the command line.

  python -m txt2img_jax.health overfit --config=configs/restart.py \
      [--workdir=W] [--steps=450] [--subset=512] [--break_targets]
  python -m txt2img_jax.health latents --config=configs/restart.py \
      [--workdir=W] [--num=1024] [--stats_scale=3]
  python -m txt2img_jax.health mosaic --workdir=W [--num=64]

Exit code 0 = PASS, 1 = FAIL, 2 = usage error. See docs/health.md for what each check does,
its thresholds and why.
"""

from __future__ import annotations

import sys

from txt2img_jax import health_checks

CHECKS = ("overfit", "latents", "mosaic")


def define_flags():
  """Flags of this command only (train.py's entry point defines its own in
  the same process elsewhere)."""
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config",
      None,
      "Recipe file, e.g. configs/restart.py[:tiny].",
      lock_config=False,
  )
  flags.DEFINE_string(
      "workdir",
      None,
      "overfit: a new or empty directory, or "
      "one an earlier check made (wiped first; default "
      "workdirs/health_overfit_<name>). "
      "latents: a run whose latent_stats.json to check "
      "(default: compute the statistics).",
  )
  flags.DEFINE_integer(
      "steps",
      health_checks.DEFAULT_STEPS,
      "overfit: train steps (the "
      "note's 2-3k, scaled to ~5 min of this CPU).",
  )
  flags.DEFINE_integer(
      "subset",
      health_checks.NOTE_SUBSET,
      "overfit: train examples " "(clamped to data.num_train).",
  )
  flags.DEFINE_float(
      "lr_factor", health_checks.LR_FACTOR, "overfit: LR multiplier."
  )
  flags.DEFINE_integer(
      "recon_num",
      health_checks.DEFAULT_RECON,
      "overfit: captions " "regenerated for the text-only reconstruction.",
  )
  flags.DEFINE_bool(
      "break_targets",
      False,
      "overfit, test only: give each "
      "caption another example's image (must FAIL).",
  )
  flags.DEFINE_integer(
      "num",
      None,
      "latents: images per split (default "
      f"{health_checks.DEFAULT_LATENT_NUM}); mosaic: held-out captions drawn "
      f"(default {health_checks.DEFAULT_MOSAIC_NUM}).",
  )
  flags.DEFINE_enum(
      "probe",
      "",
      health_checks.PROBES,
      "mosaic, test only: score the held-out "
      "images themselves (real, must PASS) or cut into token tiles "
      "(tiled, must FAIL) instead of the run's samples.",
  )
  flags.DEFINE_float(
      "stats_scale",
      1.0,
      "latents, test only: multiply the " "latent scale by this (3 must FAIL).",
  )


def main(argv):
  from absl import app
  from absl import flags

  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in CHECKS:
    raise app.UsageError(
        f"give one check: {' | '.join(CHECKS)} " f"(got {argv[1:]})", exitcode=2
    )
  from txt2img_jax.utils import paths
  from txt2img_jax.utils import reporting

  reporting.quiet_orbax()
  config = f.config
  if config is None and argv[1] != "mosaic":
    raise app.UsageError(f"{argv[1]} needs --config=FILE", exitcode=2)
  if argv[1] == "overfit":
    result = health_checks.run_overfit(
        config,
        f.workdir,
        f.steps,
        f.subset,
        f.break_targets,
        lr_factor=f.lr_factor,
        recon_num=f.recon_num,
    )
    n = result.numbers
    print(
        f"overfit of {n['config']}: {n['steps']} steps, {n['subset']} "
        f"examples, batch {n['batch_size']}, lr x {n['lr_factor']}"
        f"{', BROKEN TARGETS' if n['break_targets'] else ''}"
    )
    print(
        f"  loss_flow: first {n['loss_flow_first']:.4f}, last-3 mean "
        f"{n['loss_flow_last3']:.4f}, fall {100 * n['fall']:.1f}%"
    )
    print(
        f"  text-only reconstruction on {n['recon_num']} training captions:"
        f" mse {n['recon_mse']:.5f} vs mean image {n['mean_image_mse']:.5f}"
        f" -> rel {n['rel']:.3f}"
    )
    wd = paths.abspath(f.workdir or health_checks.default_workdir(config))
    print(f"  wrote {paths.join(wd, 'overfit.png')}, overfit.json")
  elif argv[1] == "latents":
    result = health_checks.run_latents(
        config,
        f.workdir,
        f.stats_scale,
        f.num or health_checks.DEFAULT_LATENT_NUM,
    )
    print(health_checks.latents_table(result))
  else:
    result = health_checks.run_mosaic(
        f.workdir, f.num or health_checks.DEFAULT_MOSAIC_NUM, f.probe
    )
    print(
        f"wrote {paths.join(paths.abspath(f.workdir), 'mosaic.png')}, "
        "mosaic.json"
    )
  print(result.verdict)
  sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
  from txt2img_jax import cli

  define_flags()
  cli.run(main)
