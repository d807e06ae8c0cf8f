"""The structure benchmark of a trained run, from the command line.

  python -m txt2img_jax.evaluate --workdir=W [--num=N] [--json=out.json]

samples N captions of the test split and N of the held-out colour-shape
pairings from the EMA parameters of W's latest checkpoint, scores them
(`evaluation/benchmark/`), prints a table and writes JSON.
"""

from __future__ import annotations

import json

from absl import flags

from txt2img_jax import cli
from txt2img_jax.objectives import flow


def define_flags():
  """Defined by the command only (its library is imported by the loop)."""
  flags.DEFINE_string("workdir", None, "Workdir of a training run.")
  flags.DEFINE_integer(
      "num", None, "Captions per split (default: the run's " "eval.num)."
  )
  flags.DEFINE_string("json", None, "Write the summary here as JSON.")
  flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's).")
  flags.DEFINE_float("cfg_scale", None, "CFG scale (default: the run's).")
  flags.DEFINE_enum("method", None, list(flow.SAMPLERS), "Sampler.")
  flags.DEFINE_bool(
      "allow_download",
      False,
      "Let the hub models named in the run's config.json be fetched "
      "(default: the local Hugging Face cache only).",
  )


def main(argv):
  del argv
  f = flags.FLAGS
  # Heavy imports only once the command line is good.
  from txt2img_jax.evaluation import structure
  from txt2img_jax.evaluation.benchmark import scoring
  from txt2img_jax.train import run as run_lib
  from txt2img_jax.utils import reporting

  reporting.quiet_orbax()
  run = run_lib.load_run(f.workdir, allow_download=f.allow_download)
  c = run.config
  if f.steps:
    c.sample.num_steps = f.steps
  if f.cfg_scale is not None:
    c.sample.cfg_scale = f.cfg_scale
  if f.method:
    c.sample.method = f.method
  if f.num:
    c.eval.num = f.num
  evaluator = structure.Evaluator(
      c, run.workdir, run.builder, run.text, run.generate, run.frozen, run.stats
  )
  summary = evaluator.benchmark(run.ema_params)
  summary["step"] = run.step
  print(
      f"structure benchmark of {run.workdir} at step {run.step} "
      f"({c.eval.num} captions per split, {c.sample.method} "
      f"{c.sample.num_steps} steps, cfg {c.sample.cfg_scale}):"
  )
  print(scoring.format_table({k: v for k, v in summary.items() if k != "step"}))
  print(
      "shape drawn for each described shape (objects whose colour was "
      "found):"
  )
  print(scoring.format_confusion(evaluator.shape_confusion))
  if f.json:
    with open(f.json, "w") as out:
      json.dump(summary, out, indent=2)
    print(f"wrote {f.json}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, required=["workdir"])
