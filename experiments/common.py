"""Shared pieces of the experiment scripts: load a recipe, train or reuse a
run, score it, and write markdown."""

from __future__ import annotations

import importlib
import json
import os
import shutil

from absl import logging
import jax
import numpy as np

from txt2img_jax.train import run_config
from txt2img_jax.train import changes
from txt2img_jax.train import run as run_lib
from txt2img_jax.evaluation import benchmark
from txt2img_jax.train import checkpoint_files
from txt2img_jax.evaluation import structure
from txt2img_jax.utils import runfiles
from txt2img_jax.train import loop as train
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import generator as generator_lib
from txt2img_jax.objectives.ztext import ZTEXT_KEYS, z_text_measures  # noqa: F401 (re-exported)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(name: str, variant: str = ""):
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(variant)


def train_once(config, workdir: str, fresh: bool = False) -> None:
  """Trains unless workdir already holds the final checkpoint."""
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  try:
    _, step = checkpoint_files.resolve_checkpoint(workdir)
    if step >= config.total_steps:
      check_same_run(config, workdir)
      return
  except FileNotFoundError:
    pass
  result = train.train_and_evaluate(config, workdir)
  if result.get("stopped_by"):
    # SIGTERM/SIGINT: the run saved its checkpoint; the experiment stops too
    # rather than scoring a partial run and starting the next one.
    logging.warning(
        "%s: the experiment stops here; the same command " "resumes it",
        result["stopped_by"],
    )
    raise SystemExit(0)


def check_same_run(config, workdir: str) -> None:
  """A finished run is reused only for the config it was trained with: a
  run of another recipe under the same name (a default that changed since)
  would be scored as this one. A resumed run is checked by the trainer."""
  differ = {
      k: v
      for k, v in changes.config_changes(
          run_config.load(workdir), config
      ).items()
      if changes.is_identity(k)
  }
  if differ:
    raise ValueError(
        f"{workdir} holds a finished run of another config "
        f"({changes.listed(differ)}); use another --workroot, or delete it "
        "to train this one"
    )


def score(workdir: str, num: int) -> dict[str, float]:
  """Structure benchmark of the run's final EMA parameters (num captions per
  split) plus the z_text measures below.

  Cached in the workdir as benchmark_<num>.json for the checkpoint step it
  scored, so re-running an experiment script does not re-score finished runs
  (a cache without every z_text measure gets only those added). Also writes
  samples/z_text.png (reference | decoded z_text | generated).
  """
  path = os.path.join(workdir, f"benchmark_{num}.json")
  _, step = checkpoint_files.resolve_checkpoint(workdir)
  summary = None
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("step") == step:
      summary = cached["summary"]
      if not all(f"eval/{k}" in summary for k in benchmark.BY_COUNT_KEYS):
        summary = None  # Scored before the per-count accuracies existed.
      elif (
          all(k in summary for k in ZTEXT_KEYS) or cached.get("z_text") is False
      ):
        return summary
  run = run_lib.load_run(workdir)
  if summary is None and run.config.eval.num == num:
    # The run's own last evaluation scored these parameters already.
    summary = final_evaluation(runfiles.read_metrics(workdir), step)
  run.config.eval.num = num
  ev = structure.Evaluator(
      run.config,
      run.workdir,
      run.builder,
      run.text,
      run.generate,
      run.frozen,
      run.stats,
  )
  if summary is None:
    summary = ev.benchmark(run.ema_params)
  if run.config.objective != "crossflow":
    # The noise path (objective noise_flow) has no text latent to measure.
    with open(path, "w") as f:
      json.dump(
          {"step": step, "summary": summary, "z_text": False}, f, indent=1
      )
    return summary
  data = ev.data["eval"]
  n = min(num, len(data["caption"]))
  mu = z_text_mean(run, data["ids"][:n], data["mask"][:n])
  summary.update(z_text_measures(run, mu, data["image"][:n]))
  k = min(8, n)
  generated = ev.images(run.ema_params, data, k, seed=1)
  decoded = np.asarray(
      ae_lib.decode_latent(
          run.autoencoder, run.autoencoder.params, mu[:k], run.stats
      )
  )
  grid = structure.caption_grid(
      data["image"][:k],
      generated,
      data["caption"][:k],
      columns=4,
      between=decoded,
  )
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  grid.save(os.path.join(workdir, "samples", "z_text.png"))
  with open(path, "w") as f:
    json.dump({"step": step, "summary": summary}, f, indent=1)
  return summary


def final_evaluation(rows, step: int) -> dict[str, float] | None:
  """The structure benchmark a run logged at `step` (its EMA parameters, its
  config's eval.num captions per split), or None when it logged none there
  or one without every accuracy `score` reports."""
  for row in reversed(rows):
    if row.get("step") == step and "eval/object_acc" in row:
      summary = {
          k: v for k, v in row.items() if k.startswith(("eval/", "heldout/"))
      }
      needed = [f"eval/{k}" for k in benchmark.BY_COUNT_KEYS]
      if all(k in summary for k in needed + ["heldout/object_acc"]):
        return summary
      return None
  return None


def z_text_mean(
    run, ids: np.ndarray, mask: np.ndarray, params=None
) -> np.ndarray:
  """The text head's posterior mean for each caption, (N, H, W, C), under
  `params` (default: the run's EMA parameters)."""

  @jax.jit
  def mean(params, frozen, ids, mask):
    return generator_lib.text_posterior(
        run.model, run.text.frozen, params, frozen["text"], ids, mask
    )[0]

  params = run.ema_params if params is None else params
  return np.asarray(mean(params, run.frozen, ids, mask))


def write_table(path: str, command: str, text: str) -> None:
  """A markdown table into `path`, headed by the command that wrote it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    fh.write(f"<!-- written by {command} -->\n{text}\n")


def train_metrics(workdir: str) -> list[dict]:
  return runfiles.read_metrics(workdir)


def text_head_params(workdir: str) -> int:
  raw, _ = checkpoint_files.load_raw(workdir)
  return int(
      sum(np.prod(x.shape) for x in jax.tree.leaves(raw["params"]["text_head"]))
  )


def median_steps_per_sec(workdir: str) -> float:
  rates = [
      r["train/steps_per_sec"]
      for r in train_metrics(workdir)
      if "train/steps_per_sec" in r
  ]
  # The first interval includes compilation.
  return float(np.median(rates[1:] if len(rates) > 1 else rates))
