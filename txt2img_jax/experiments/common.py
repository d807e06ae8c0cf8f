"""Shared pieces of the experiment scripts: load a recipe, train or reuse a
run, score it, and write markdown."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from txt2img_jax import assembly
from txt2img_jax import checkpointing
from txt2img_jax import config_lib
from txt2img_jax import evaluate
from txt2img_jax import runfiles
from txt2img_jax import train
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import generator as generator_lib

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
  """Structure benchmark of the run's final EMA parameters (num captions per
  split) plus the z_text measures below.

  Cached in the workdir as benchmark_<num>.json for the checkpoint step it
  scored, so re-running an experiment script does not re-score finished runs
  (a cache without every z_text measure gets only those added). Also writes
  samples/z_text.png (reference | decoded z_text | generated).
  """
  path = os.path.join(workdir, f"benchmark_{num}.json")
  _, step = checkpointing.resolve_checkpoint(workdir)
  summary = None
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("step") == step:
      summary = cached["summary"]
      if all(k in summary for k in ZTEXT_KEYS):
        return summary
  run = assembly.load_run(workdir)
  run.config.eval.num = num
  ev = evaluate.Evaluator(run.config, run.workdir, run.builder, run.text,
                          run.generate, run.frozen, run.stats)
  if summary is None:
    summary = ev.benchmark(run.ema_params)
  data = ev.data["eval"]
  n = min(num, len(data["caption"]))
  mu = z_text_mean(run, data["ids"][:n], data["mask"][:n])
  summary.update(z_text_measures(run, mu, data["image"][:n]))
  k = min(8, n)
  generated = ev.images(run.ema_params, data, k, seed=1)
  decoded = np.asarray(ae_lib.decode_latent(run.autoencoder, run.autoencoder.params, mu[:k],
                                            run.stats))
  grid = evaluate.caption_grid(data["image"][:k], generated,
                               data["caption"][:k], columns=4,
                               between=decoded)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  grid.save(os.path.join(workdir, "samples", "z_text.png"))
  with open(path, "w") as f:
    json.dump({"step": step, "summary": summary}, f, indent=1)
  return summary


def z_text_mean(run, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The text head's posterior mean for each caption, (N, H, W, C)."""

  @jax.jit
  def mean(params, frozen, ids, mask):
    return generator_lib.text_posterior(run.model, run.text.frozen, params,
                                        frozen["text"], ids, mask)[0]

  return np.asarray(mean(run.ema_params, run.frozen, ids, mask))


ZTEXT_KEYS = ("ztext/corr", "ztext/caption_share", "ztext/tile_repeat",
              "ztext/roughness")


def z_text_measures(run, mu: np.ndarray, images: np.ndarray,
                    tile: int = 2) -> dict[str, float]:
  """How much of each caption's own image is already in z_text, in place.

  ztext/corr: correlation, over every (example, position, channel), between
  the posterior mean and the standardised image latent, both centred per
  (position, channel) over the examples: 1 = z_text is (a scaled copy of)
  the image's deviation from the average image; 0 = no caption-specific
  layout in z_text (it is then a code the flow network must decode).
  ztext/caption_share: the share of z_text's energy that varies with the
  caption, sum((mu - mean mu)^2) / sum(mu^2): 0 = the same z_text for every
  caption.
  ztext/tile_repeat: the share of the caption-dependent part (mu - mean mu)
  that is the same in every (tile, tile) patch of the latent: 1 = the caption
  reaches every patch identically (nothing is placed), 1 / num_patches = no
  repetition beyond chance. tile = 2 is grid_query's patch (grid 8 on a
  16 x 16 latent).
  ztext/roughness: mean |neighbour difference| of mu over its mean |mu|
  (the TV penalty's quantity, scale-free).
  """
  x1 = np.asarray(ae_lib.standardize(
      run.autoencoder.encode_moments(run.autoencoder.params, images)[0], run.stats))
  a = mu - mu.mean(0, keepdims=True)
  b = x1 - x1.mean(0, keepdims=True)
  corr = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))
  diffs = np.concatenate([np.abs(np.diff(mu, axis=1)).ravel(),
                          np.abs(np.diff(mu, axis=2)).ravel()])
  rough = float(diffs.mean() / (np.abs(mu).mean() + 1e-12))
  share = float((a * a).sum() / ((mu * mu).sum() + 1e-12))
  n, h, w, c = a.shape
  patches = a.reshape(n, h // tile, tile, w // tile, tile, c)
  repeated = patches.mean(axis=(1, 3), keepdims=True)
  num_patches = (h // tile) * (w // tile)
  repeat = float(num_patches * (repeated ** 2).sum() / ((a * a).sum() + 1e-12))
  return {"ztext/corr": corr, "ztext/caption_share": share,
          "ztext/tile_repeat": repeat, "ztext/roughness": rough}


def train_metrics(workdir: str) -> list[dict]:
  return runfiles.read_metrics(workdir)


def text_head_params(workdir: str) -> int:
  raw, _ = checkpointing.load_raw(workdir)
  return int(sum(np.prod(x.shape) for x in
                 jax.tree.leaves(raw["params"]["text_head"])))


def median_steps_per_sec(workdir: str) -> float:
  rates = [r["train/steps_per_sec"] for r in train_metrics(workdir)
           if "train/steps_per_sec" in r]
  # The first interval includes compilation.
  return float(np.median(rates[1:] if len(rates) > 1 else rates))
