"""A frozen network run data-parallel over this process's devices.

`prepare` encodes every image (KL-VAE moments) and caption (text features)
once. On a host with several accelerators (a TPU VM's 4 or 8 chips, a GPU
box) one device would do all of it while the others wait; `LocalDataParallel`
splits each batch over `jax.local_devices()` with the weights replicated.
Only this process's devices take part, so on a pod each host encodes its own
share of the data without talking to the others.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


class LocalDataParallel:
  """`fn(params, *batch)` jitted, each batch array split on its leading dim
  over the local devices (padded with copies of its last row to a multiple
  of their count; the padding is cut from the outputs, which come back as
  numpy arrays)."""

  def __init__(self, fn: Callable[..., Any], params: Any):
    devices = jax.local_devices()
    self.num_devices = len(devices)
    self._fn = jax.jit(fn)
    self._split = None
    if self.num_devices > 1:
      mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
      self._split = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec("batch")
      )
      params = jax.device_put(
          params,
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
      )
    self._params = params

  def __call__(self, *batch: np.ndarray) -> Any:
    n = len(batch[0])
    pad = -n % self.num_devices
    if pad:
      batch = tuple(
          np.concatenate([b, np.repeat(b[-1:], pad, 0)]) for b in batch
      )
    if self._split is not None:
      batch = tuple(jax.device_put(b, self._split) for b in batch)
    out = self._fn(self._params, *batch)
    return jax.tree.map(lambda a: np.asarray(a)[:n], out)
