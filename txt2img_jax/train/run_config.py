"""A run's `config.json`: written when training starts (once the checkpoint
is known to fit), read by every command that rebuilds the run from its
workdir, resumes it or takes weights from it (`init_from`).

A field added to `configs/base.py` after a run was saved is read with its
default, which is the behaviour the run was trained with.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles

CONFIG_FILE = runfiles.CONFIG_FILE
# Blocks whose fields depend on their `kind`: a saved block is kept whole.
_KIND_BLOCKS = ("sampler", "schedule", "then", "first")


def exists(workdir: str) -> bool:
  return paths.exists(paths.join(workdir, CONFIG_FILE))


def save(config: ml_collections.ConfigDict, workdir: str, latent_shape) -> None:
  """Process 0 writes the config, with `latent_dims` (read by diagnose)."""
  d = config.to_dict()
  d["latent_dims"] = int(np.prod(latent_shape))
  if jax.process_index() == 0:
    runfiles.write_json(
        workdir, CONFIG_FILE, d, indent=2, sort_keys=True, default=str
    )


def load(workdir: str) -> ml_collections.ConfigDict:
  d = runfiles.read_json(workdir, CONFIG_FILE)
  d.pop("latent_dims", None)
  return ml_collections.ConfigDict(_with_defaults(d, _base_defaults()))


def _base_defaults() -> dict:
  """Every field's default (configs/base.py)."""
  from configs import base  # pylint: disable=g-import-not-at-top

  return base.get_config().to_dict()


def _with_defaults(saved: dict, defaults: dict) -> dict:
  out = dict(saved)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif (
        isinstance(v, dict)
        and isinstance(out[k], dict)
        and k not in _KIND_BLOCKS
    ):
      out[k] = _with_defaults(out[k], v)
  return out
