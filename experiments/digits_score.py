"""Scoring a run trained on the digits: does each sample show its captioned
digit (`digits_data.Classifier`), is it as smooth as the data (the mosaic
measure), and a grid of the samples, one row per digit."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from experiments import digits_data


def score(workdir: str, seed: int = 0, real_num: int = 512) -> dict:
  """Scores a trained run (cached as digits_score.json for its step)."""
  from txt2img_jax.train import run as run_lib
  from txt2img_jax.train import checkpoint_files
  from txt2img_jax.evaluation import prompts as evaluate_prompts
  from txt2img_jax.data import tokenizer as tokenizer_lib

  path = os.path.join(workdir, "digits_score.json")
  _, step = checkpoint_files.resolve_checkpoint(workdir)
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("step") == step:
      return cached
  run = run_lib.load_run(workdir)
  c = run.config
  ref = evaluate_prompts.mosaic_reference(
      c,
      run.builder,
      run.parts.latent_shape[0],
      run.text.tokenizer,
      num=real_num,
  )
  clf = digits_data.Classifier(c.data.image_size)
  prompts = [p for d in range(10) for p in digits_data.captions(d)]
  labels = np.repeat(np.arange(10), len(digits_data.TEMPLATES))
  out = {
      "step": step,
      "classifier_heldout_acc": clf.heldout_acc,
      "period": ref.period,
      "num": len(prompts),
  }
  rows = []
  for name, use_mean in (("mean", True), ("draw", False)):
    ids, mask = tokenizer_lib.tokenize(
        run.text.tokenizer, prompts, c.data.max_len
    )
    images = run.images(ids, mask, seed=seed, use_mean=use_mean)
    images = np.clip(images, 0.0, 1.0)
    out[f"{name}/digit_acc"] = float((clf.predict(images) == labels).mean())
    out.update({f"{name}/{k}": v for k, v in ref.score(images).items()})
    rows.append(images)
  # The grid: per digit, its captions' samples from mu, then drawn.
  n = len(digits_data.TEMPLATES)
  per_digit = [
      np.concatenate([r[d * n : (d + 1) * n] for r in rows]) for d in range(10)
  ]
  grid = _grid(np.stack(per_digit))
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  grid_path = os.path.join(workdir, "samples", "digits.png")
  Image.fromarray(grid).resize(
      (grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST
  ).save(grid_path)
  out["grid"] = grid_path
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
  return out


def _grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
  """(rows, cols, S, S, 3) in [0, 1] -> uint8 image with grey gutters."""
  r, c, s = images.shape[:3]
  out = np.full((r * (s + pad) + pad, c * (s + pad) + pad, 3), 128, np.uint8)
  for i in range(r):
    for j in range(c):
      y, x = pad + i * (s + pad), pad + j * (s + pad)
      out[y : y + s, x : x + s] = (np.clip(images[i, j], 0, 1) * 255).round()
  return out
