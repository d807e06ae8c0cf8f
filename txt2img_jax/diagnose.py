"""Reads a run's logs and writes the diagnosis (`txt2img_jax/diagnosis/`).

python -m txt2img_jax.diagnose --workdir=W [--out_dir=D] [--window=N]
"""

from __future__ import annotations

from absl import flags

from txt2img_jax import cli
from txt2img_jax import diagnosis
from txt2img_jax.utils import paths


def define_flags():
  flags.DEFINE_string(
      "workdir", None, "The run's workdir (holds metrics.jsonl, config.json)."
  )
  flags.DEFINE_string(
      "out_dir", None, "Where plots and report.json go; default W/diagnose."
  )
  flags.DEFINE_integer(
      "window",
      diagnosis.DEFAULT_WINDOW,
      "Trend window in training steps (the last N steps of the run).",
      lower_bound=1,
  )


def main(argv):
  del argv
  f = flags.FLAGS
  report = diagnosis.run(
      f.workdir, f.out_dir, f.window
  )  # cli.run reports errors.
  print(diagnosis.format_report(report), end="")
  out_dir = f.out_dir or paths.join(f.workdir, "diagnose")
  print(f"\nwrote plots and report.json to {out_dir}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, required=["workdir"])
