"""The largest batch whose train step fits a TPU topology's HBM, found by
compiling it (train/aot.py's `compile_step`) at a few batch sizes."""

from __future__ import annotations

import copy

from txt2img_jax.train import aot
from txt2img_jax.train import sharding


def largest_true(fits, limit: int, start: int = 1) -> tuple[int, int | None]:
  """(largest n <= limit found with fits(n), smallest n found failing or
  None), for a `fits` that is true up to some n and false above: doubling
  from `start` while it fits (halving while it does not), then bisecting
  the gap to within 1/8 of the answer."""
  good, bad, n = 0, None, max(1, min(start, limit))
  if fits(n):
    good = n
    while n * 2 <= limit:
      n *= 2
      if not fits(n):
        bad = n
        break
      good = n
  else:
    bad = n
    while n > 1:
      n //= 2
      if fits(n):
        good = n
        break
      bad = n
  if bad is not None and good:
    while bad - good > max(1, good // 8):
      mid = (good + bad) // 2
      if fits(mid):
        good = mid
      else:
        bad = mid
  return good, bad


def find_max_batch(
    config, devices, vocab_size: int = 32000, limit: int = 4096
) -> dict:
  """The largest per-device batch whose step compiles within HBM, searched
  from the config's own (`largest_true`). Each try is one compile of the
  program training runs."""
  data = sharding.make_mesh(config.mesh.data, config.mesh.model, devices)
  rows = data.shape["data"]
  tries = []

  def fits(per_device: int) -> bool:
    c = copy.deepcopy(config)
    c.batch_size = per_device * rows
    r = aot.compile_step(c, devices, vocab_size)
    tries.append(
        {
            "per_device_batch": per_device,
            "fits": r["fits"],
            "peak": r.get("memory", {}).get("peak"),
            "error": r.get("error"),
        }
    )
    return r["fits"]

  start = max(1, config.batch_size // rows)
  good, bad = largest_true(fits, limit, start)
  return {
      "max_per_device_batch": good,
      "max_batch_size": good * rows,
      "first_failing": bad,
      "tries": tries,
  }
