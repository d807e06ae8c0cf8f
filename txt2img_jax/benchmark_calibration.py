"""Structure benchmark, calibration: the scores of reference cases with known answers.

The data's own renders must score near 1, renders scored against another example's
description near chance, pixel-shuffled renders (right colours, no shapes) high on the
mosaic index, and blurred renders (soft but coherent) near the renders. docs/benchmark.md
quotes the table.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from txt2img_jax.benchmark_pixels import NUM_COLORS
from txt2img_jax.benchmark_scoring import (
    SUMMARY_KEYS, format_table, score, summarize, summarize_splits)
from txt2img_jax.data import shapes


def _stack(examples: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  images = np.stack([e["image"] for e in examples])
  desc = {k: np.stack([np.asarray(e[k]) for e in examples])
          for k in ("shapes", "colors", "sizes", "cells", "num_objects")}
  return images, desc


def shuffle_pixels(images, rng: np.random.Generator) -> np.ndarray:
  """Permutes the pixel positions of each image independently (same
  permutation for the three channels): same colour histogram, no shape."""
  images = np.asarray(images)
  n, s = images.shape[:2]
  flat = images.reshape(n, s * s, -1)
  perm = np.argsort(rng.random((n, s * s)), axis=1)
  return np.take_along_axis(flat, perm[..., None], 1).reshape(images.shape)


def blur(images, sigma: float = 0.7) -> np.ndarray:
  """Gaussian blur (per channel) of uint8 images; returns uint8."""
  x = np.asarray(images, np.float32)
  y = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")
  return np.clip(np.round(y), 0, 255).astype(np.uint8)


def chance_levels(descriptions) -> dict[str, float]:
  """Accuracy of an image that ignores its caption, per attribute, assuming
  the attributes are independent: colour present with probability
  (colours in an image) / num_colours, uniform cell, shape and size."""
  mean_objects = float(np.mean(descriptions["num_objects"]))
  c = mean_objects / NUM_COLORS
  p, s, z = 1 / 9, 1 / len(shapes.SHAPES), 1 / len(shapes.SIZES)
  return {
      "color_acc": c, "shape_acc": c * s, "position_acc": c * p,
      "size_acc": c * z, "object_acc": c * s * p * z,
      "shape_given_color": s, "position_given_color": p,
      "size_given_color": z,
  }


def calibrate(num: int = 500, seed: int = 0, image_size: int = 32) -> dict:
  """Scores the reference cases on `num` test-split examples.

  Returns {"render": summary, "shuffled_desc": summary,
  "pixel_shuffle": summary, "blur": summary, "chance": chance_levels,
  "seconds": {case: scoring time}}.
  - render: the data's own jittered renders with their own descriptions;
  - shuffled_desc: the same renders scored against a permutation of the
    descriptions (a generator that ignores the caption);
  - pixel_shuffle: each render's pixels permuted within the image (the
    colour-block failure: right colours, no shapes);
  - blur: renders blurred by a Gaussian of sigma 0.7 px (soft but coherent).
  """
  exs = [shapes.example(seed, "test", i, image_size) for i in range(num)]
  images, desc = _stack(exs)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(num)
  for i in range(num if num > 1 else 0):  # no example keeps its description
    if perm[i] == i:
      j = (i + 1) % num
      perm[i], perm[j] = perm[j], perm[i]
  shuffled_desc = {k: v[perm] for k, v in desc.items()}
  cases = {
      "render": (images, desc),
      "shuffled_desc": (images, shuffled_desc),
      "pixel_shuffle": (shuffle_pixels(images, rng), desc),
      "blur": (blur(images, 0.7), desc),
  }
  result, seconds = {}, {}
  for name, (imgs, d) in cases.items():
    t0 = time.perf_counter()
    result[name] = summarize(score(imgs, d))
    seconds[name] = time.perf_counter() - t0
  result["chance"] = chance_levels(desc)
  result["seconds"] = seconds
  return result


def calibration_table(cal: dict) -> str:
  cases = {k: v for k, v in cal.items() if k not in ("chance", "seconds")}
  flat = summarize_splits(cases)
  for k in SUMMARY_KEYS:
    if k in cal["chance"]:
      flat[f"chance/{k}"] = cal["chance"][k]
  return format_table(flat)
