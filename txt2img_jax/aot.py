"""Compile a config's train step for a TPU topology on this host (no TPU
needed): does it fit, what batch fits, what step time does XLA expect
(`train/aot.py`). Needs libtpu: run it from a venv with the `tpu` extra.

  python -m txt2img_jax.aot --config=configs/perf_xl2.py --topology=v5e:8x8
      [--config.mesh.preset=fsdp] [--config.data.batch_size=...]
      [--find_max_batch] [--json=aot.json]
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from txt2img_jax.train import aot, aot_max_batch, aot_tpu
from txt2img_jax.utils import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")

_TOPOLOGY = flags.DEFINE_string(
    "topology",
    "v5e:2x2",
    "TPU topology to compile for: v5e:8x8 (a v5e-64), v5p:4x4x4, v6e:4x4...",
)

_NUM_SLICES = flags.DEFINE_integer(
    "num_slices",
    1,
    "Slices of that topology joined over the data-center network.",
)

_FIND_MAX_BATCH = flags.DEFINE_bool(
    "find_max_batch",
    False,
    "Also search the largest batch that fits (one compile per try).",
)

_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size",
    32000,
    "Words of an embedded text encoder's table when the data is not the "
    "shapes set (a real run reads them from its data).",
)

_JSON = flags.DEFINE_string("json", "", "Also write the figures to this file.")


def main(argv):
  del argv
  config = _CONFIG.value
  devices = aot_tpu.topology_devices(_TOPOLOGY.value, _NUM_SLICES.value)
  topology = _TOPOLOGY.value + (
      f" x{_NUM_SLICES.value} slices" if _NUM_SLICES.value > 1 else ""
  )
  r = aot.report(config, devices, topology, _VOCAB_SIZE.value)
  print(aot.format_report(r), flush=True)
  if _FIND_MAX_BATCH.value:
    r["max_batch"] = aot_max_batch.find_max_batch(
        config, devices, _VOCAB_SIZE.value
    )
    m = r["max_batch"]
    print(
        f"largest batch that fits: {m['max_batch_size']} "
        f"({m['max_per_device_batch']} per device; "
        + (
            f"{m['first_failing']} per device does not fit"
            if m["first_failing"]
            else "the search's limit"
        )
        + f"; {len(m['tries'])} compiles)"
    )
  if _JSON.value:
    paths.write_text(_JSON.value, json.dumps(r, indent=1, default=str))


if __name__ == "__main__":
  from txt2img_jax import cli

  cli.run(main, required=["config"])
