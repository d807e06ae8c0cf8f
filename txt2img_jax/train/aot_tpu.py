"""The TPU side of ahead-of-time compilation (train/aot.py): each chip's
nominal figures, a topology's compile-only devices, and what XLA's compiled
program says: whether it fits, the collectives in its HLO, and the cost
model's step time with the ops it left uncosted.

Imports no jax at module level: the figures are read from text and numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Nominal figures per chip, from the Cloud TPU system-architecture pages:
  HBM capacity, peak dense bf16 FLOP/s, HBM bandwidth. The usable HBM is a
  little less (the runtime keeps some), which is why peaks above 90% are
  called tight."""

  name: str
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float


# jax's device_kind -> the chip.
CHIPS = {
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1228e9),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1640e9),
}
TIGHT = 0.9
COLLECTIVES = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
)


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of a TPU topology, e.g. "v5e:2x2"."""
  try:
    from jax.experimental import topologies

    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    desc = topologies.get_topology_desc(
        topology_name=topology, platform="tpu", **kwargs
    )
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ValueError(
        f"--topology={topology!r}: jax cannot describe it ({first}). It needs"
        " libtpu: a venv with `pip install -e '.[tpu]'` (docs/install.md);"
        " names look like v5e:2x2, v5e:8x8, v5p:2x2x2, v6e:4x4"
    ) from None
  return list(desc.devices)


def chip_of(device) -> Chip | None:
  return CHIPS.get(device.device_kind)


def out_of_memory(error: Exception) -> str | None:
  """XLA's one line on a program that does not fit, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
    return None
  for line in text.splitlines():
    if "memory" in line.lower():
      return line.strip()
  return text.strip().splitlines()[0]


_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype[:4]) or 8)
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    total += n * bits // 8
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """kind -> {"count", "bytes"}: each collective in the compiled HLO, by the
  size of what it produces per device (async pairs counted at their -done).
  Static occurrences: a collective inside a loop body is counted once."""
  out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
  op = re.compile(
      r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start|-done)?\("
  )
  for line in hlo_text.splitlines():
    m = op.search(line)
    if not m or m.group(3) == "-start":
      continue
    kind = out[m.group(2)]
    kind["count"] += 1
    kind["bytes"] += _shape_bytes(m.group(1))
  return out


def cost_model_seconds(optimal_seconds: float, roofline_s: float):
  """(seconds of the ops XLA's cost model costs, how many it left uncosted).

  libtpu's `optimal_seconds` adds -1 for each op it cannot cost (seen with
  some sharded dot_generals and the rbg random-bit generator): the total is
  (costed seconds) - (uncosted ops). Read here as the fewest uncosted ops
  that bring the costed part up to the roofline bound, which those ops take
  at least: exact while the costed part is within a second of the bound.
  """
  uncosted = max(0, math.ceil(roofline_s - optimal_seconds - 1e-9))
  return optimal_seconds + uncosted, uncosted
