"""Entry point: python -m txt2img_jax.main --config=configs/restart.py [--workdir=W]

Running the same command again on the same workdir resumes from its latest
checkpoint. Overrides: --config.total_steps=20 --config.head.kind=grid_query.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from txt2img_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Recipe file, e.g. configs/restart.py[:tiny].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, TensorBoard events, "
    "samples). Default: workdirs/<config.name>.",
)
_HOSTS = cli.DistributedFlags()


def main(argv):
  # Imported here so that a bad command line fails before the heavy imports.
  from txt2img_jax.utils import reporting
  from txt2img_jax.train import loop as train

  reporting.quiet_orbax()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  _HOSTS.initialize(config)
  workdir = _WORKDIR.value or os.path.join("workdirs", config.name)
  logging.info(
      "host %d/%d, %d local / %d global devices (%s); workdir %s",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
      jax.devices()[0].platform,
      workdir,
  )
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  cli.run(main, required=["config"])
