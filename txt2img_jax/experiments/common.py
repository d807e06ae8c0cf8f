"""Shared pieces of the experiment scripts: load a recipe, train or reuse a
run, score it, and write markdown."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from txt2img_jax import checkpointing
from txt2img_jax import config_lib
from txt2img_jax import evaluate
from txt2img_jax import inference
from txt2img_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def recipe(name: str, variant: str = ""):
  module = config_lib.load_sibling(os.path.join(REPO, "configs", "x.py"), name)
  return module.get_config(variant)


def train_once(config, workdir: str, fresh: bool = False) -> None:
  """Trains unless workdir already holds the final checkpoint."""
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  try:
    _, step = checkpointing.resolve_checkpoint(workdir)
    if step >= config.total_steps:
      return
  except FileNotFoundError:
    pass
  train.train_and_evaluate(config, workdir)


def score(workdir: str, num: int) -> dict[str, float]:
  run = inference.load_run(workdir)
  run.config.eval.num = num
  ev = evaluate.Evaluator(run.config, run.workdir, run.builder, run.text,
                          run.generate, run.frozen, run.stats)
  return ev.benchmark(run.ema_params)


def train_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def text_head_params(workdir: str) -> int:
  raw, _ = checkpointing.load_raw(workdir)
  return int(sum(np.prod(x.shape) for x in
                 jax.tree.leaves(raw["params"]["text_head"])))


def median_steps_per_sec(workdir: str) -> float:
  rates = [r["train/steps_per_sec"] for r in train_metrics(workdir)
           if "train/steps_per_sec" in r]
  # The first interval includes compilation.
  return float(np.median(rates[1:] if len(rates) > 1 else rates))
