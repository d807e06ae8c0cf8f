"""A trained run's scores, from the command line.

  python -m txt2img_jax.evaluate --workdir=W [--num=N] [--json=out.json]

On the shapes set: samples N captions of the test split and N of the
held-out colour-shape pairings from the EMA parameters of W's latest
checkpoint, scores them (`evaluation/benchmark/`) and prints a table. On a
user's data (a folder, TFDS): the Fréchet distance and KID of N images
drawn for the captions of the first N records of `--fid_split` against those
records' images, on `--fid_features` (`evaluation/fd_measure.py`), printed
and added to the run's metrics.jsonl. Either writes JSON with --json.
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
      "num",
      None,
      "Shapes: captions per split (default: the run's eval.num). User "
      "data: images for FD/KID (default: the run's eval.fid_num).",
  )
  flags.DEFINE_string("json", None, "Write the summary here as JSON.")
  flags.DEFINE_integer("steps", None, "Sampler steps (default: the run's).")
  flags.DEFINE_float("cfg_scale", None, "CFG scale (default: the run's).")
  flags.DEFINE_enum("method", None, list(flow.SAMPLERS), "Sampler.")
  flags.DEFINE_string(
      "fid_features",
      None,
      "User data: alexnet | vgg16 | inception (the FID; needs "
      "--fid_weights), the network of FD/KID (default: the run's "
      "eval.fid_features, else alexnet).",
  )
  flags.DEFINE_string(
      "fid_weights",
      None,
      "inception: the FID Inception's weights, "
      "pt_inception-2015-12-05-6726825d.pth (default: the run's "
      "eval.fid_weights).",
  )
  flags.DEFINE_enum(
      "fid_split", None, ["train", "val"], "User data: the reference split."
  )
  flags.DEFINE_string(
      "clip_model",
      None,
      "User data: a CLIP folder or hub id; the CLIP score of the FD/KID "
      "images against their captions (default: the run's eval.clip_model).",
  )
  flags.DEFINE_bool(
      "allow_download",
      False,
      "Let the hub models named in the run's config.json be fetched "
      "(default: the local Hugging Face cache only).",
  )


def write_json(path: str, summary) -> None:
  """The --json file (a local path or a bucket URL), written whole."""
  from txt2img_jax.utils import paths

  paths.write_text(path, json.dumps(summary, indent=2))
  print(f"wrote {path}")


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
  if getattr(run.builder, "DEFAULT_EVALUATOR", "structure") == "prompts":
    return _fd_kid(run, f)
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
    write_json(f.json, summary)


def _fd_kid(run, f) -> None:
  """FD and KID of a run on a user's data; added to its metrics.jsonl unless
  a training process holds the run."""
  from absl import logging

  from txt2img_jax.evaluation import fd_measure
  from txt2img_jax.utils import runfiles
  from txt2img_jax.utils import runlock

  c = run.config
  with c.unlocked():
    c.eval.fid_features = f.fid_features or c.eval.fid_features or "alexnet"
    c.eval.fid_num = f.num or c.eval.fid_num
    c.eval.fid_split = f.fid_split or c.eval.fid_split
    c.eval.fid_weights = f.fid_weights or c.eval.fid_weights
  measure = fd_measure.FdMeasure(c, run.builder, run.text.tokenizer)
  if not measure.enabled:
    raise cli.UserError(
        f"split {c.eval.fid_split!r} of the run's data has too few records "
        "for FD/KID"
    )

  clip_model = f.clip_model or c.eval.clip_model
  clip = None
  if clip_model:
    from txt2img_jax.evaluation import prompts

    clip = prompts.ClipScorer(clip_model)
  out = measure(run.images, clip)
  net = measure.features.net
  print(
      f"FD/KID of {run.workdir} at step {run.step}: {measure.num} images "
      f"drawn for the captions of split {c.eval.fid_split!r} against its "
      f"images, features {measure.features.name} ({c.sample.method} "
      f"{c.sample.num_steps} steps, cfg {c.sample.cfg_scale}):\n"
      f"  {'FID' if net == 'inception' else 'FD '} {out[f'val/fd_{net}']:.4f}\n"
      f"  KID {out[f'val/kid_{net}']:.5f} +- {out[f'val/kid_{net}_std']:.5f}"
  )
  if clip is not None:
    print(f"  CLIP score {out['val/clip_score']:.3f} ({clip_model})")
  try:
    with runlock.RunLock(run.workdir, what="evaluating"):
      runfiles.append_metrics(
          run.workdir, {"step": run.step, runfiles.RESCORED: True, **out}
      )
    print(f"added to {runfiles.metrics_path(run.workdir)}")
  except runlock.RunLockedError as e:
    logging.warning("not written to the run's metrics: %s", e)
  if f.json:
    write_json(f.json, {"step": run.step, **out})


if __name__ == "__main__":
  define_flags()
  cli.run(main, required=["workdir"])
