"""Prepare a data set once: python -m txt2img_jax.prepare --config=C [--config.x=...]

For a user's data (`data.name` folder, tfds or webdataset) this writes the ArrayRecord
shards the trainer reads, under <data_dir>/prepared/, with a progress line,
`prepare_report.json` (every bad input counted by reason, with the first
offending paths) and, for a KL-VAE latent space, the VAE moments of every
image; for a frozen text encoder with data.cache_text, the token features of
every caption. Interrupted, it continues where it stopped. The main command runs
the same preparation by itself when it is missing; this command lets you
do it ahead and read the report first.

On a pod, start it on every host with --distributed (as the main command):
the hosts share the work, each decoding and encoding its share on its own
devices, when the data dir is shared (gs:// or a shared filesystem);
rehearsed on one machine with
  python -m txt2img_jax.launch_local --num_processes=2 \
      --module=txt2img_jax.prepare -- --config=configs/folder.py ...
"""

import signal

from ml_collections import config_flags

from txt2img_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, e.g. configs/folder.py.", lock_config=True
)
_HOSTS = cli.DistributedFlags()


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  from txt2img_jax.train import run_data  # Heavy imports after the flags are good.
  from txt2img_jax.models import latents

  config = _CONFIG.value
  _HOSTS.initialize(config)
  # jax.distributed turns SIGTERM into a preemption notice that a training
  # loop polls; prepare has nothing to save (a rerun resumes at the first
  # unwritten chunk), so SIGTERM ends it at once, as without --distributed.
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  latents.latent_shape(config)
  autoencoder = latents.build(config)  # A pixel space has nothing to cache.
  data = run_data.prepare_data(config, autoencoder)
  splits = {
      s: data.split_size(s)
      for s in ("train", "val", "test", "heldout")
      if _has(data, s)
  }
  where = getattr(data, "out_dir", None) or getattr(data, "data_dir", "")
  print(
      f"prepared {config.data.name}: "
      + ", ".join(f"{n} {s}" for s, n in splits.items())
      + f" at {where}"
  )


def _has(data, split: str) -> bool:
  try:
    return data.split_size(split) > 0
  except KeyError:
    return False


if __name__ == "__main__":
  cli.run(main, required=["config"])
