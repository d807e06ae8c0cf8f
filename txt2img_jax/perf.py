"""Train-step throughput against what this machine's XLA matmul can do
(`train/throughput.py`; where the time goes: `train/op_profile.py`).

  python -m txt2img_jax.perf --config=configs/perf_b2.py [--steps=20]
      [--json=perf.json] [--matmul_n=8192] [--profile=N]
"""

from __future__ import annotations

import json

from absl import flags
from absl import logging
from ml_collections import config_flags

from txt2img_jax.train import op_profile
from txt2img_jax.train import throughput
from txt2img_jax.utils import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")


_STEPS = flags.DEFINE_integer(
    "steps", 20, "Timed steps (0: compile and count only)."
)


_WARMUP = flags.DEFINE_integer(
    "warmup", 3, "Untimed steps before the timed ones."
)


_MATMUL_N = flags.DEFINE_integer(
    "matmul_n",
    0,
    "Side of the reference matmul (0: 2048 on CPU, 8192 elsewhere).",
)


_JSON = flags.DEFINE_string(
    "json", "", "Also write the measurement to this file."
)


_PROFILE = flags.DEFINE_integer(
    "profile", 0, "Also trace this many steps and print where their time goes."
)


def main(argv):
  del argv
  r = throughput.measure(
      _CONFIG.value,
      _STEPS.value,
      _WARMUP.value,
      _MATMUL_N.value or None,
      _PROFILE.value,
  )
  logging.info("%s", r)
  print(throughput.report(r))
  if "profile" in r:
    print(op_profile.profile_report(r["profile"]))
  if _JSON.value:
    paths.write_text(_JSON.value, json.dumps(r, indent=1))


if __name__ == "__main__":
  from txt2img_jax import cli

  cli.run(main, required=["config"])
