"""Images for many captions in fixed-size batches: the sampler compiles once.

Light on purpose (jax and numpy only): `sample` draws through it on a
machine without the data side installed.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import numpy as np


def generate_images(
    generate,
    params,
    frozen,
    stats,
    sample_config,
    ids,
    mask,
    batch_size: int,
    seed: int = 0,
    offset: int = 0,
    **overrides,
) -> np.ndarray:
  """Images for every caption, in fixed-size batches (the last one padded)
  so the sampler compiles once; the run's sampler settings unless
  overridden. The batch starting at caption i draws from
  fold_in(PRNGKey(seed), offset + i): a long list given in chunks (with
  their offsets) draws what it draws given whole."""
  kw = dict(
      num_steps=int(sample_config.num_steps),
      method=sample_config.method,
      cfg_scale=float(sample_config.cfg_scale),
      use_mean=bool(sample_config.use_mean),
  )
  kw.update(overrides)
  bs = batch_size
  out = []
  for i in range(0, len(ids), bs):
    b_ids, b_mask = ids[i : i + bs], mask[i : i + bs]
    pad = bs - len(b_ids)
    if pad:
      b_ids = np.concatenate([b_ids, np.repeat(b_ids[-1:], pad, 0)])
      b_mask = np.concatenate([b_mask, np.repeat(b_mask[-1:], pad, 0)])
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), offset + i)
    imgs = generate(params, frozen, stats, b_ids, b_mask, rng, **kw)
    if not imgs.is_fully_addressable:  # Sharded over hosts (e.g. fsdp).
      imgs = multihost_utils.process_allgather(imgs, tiled=True)
    out.append(np.asarray(jax.device_get(imgs))[: bs - pad])
  return np.concatenate(out)
