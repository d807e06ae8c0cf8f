"""Structure benchmark, calibration: the scores of reference cases with known answers.

The data's own renders must score near 1, renders scored against another example's
description near chance, pixel-shuffled renders (right colours, no shapes) high on the
mosaic index, and blurred renders (soft but coherent) and hard-edged renders (no
anti-aliasing) near the renders. docs/benchmark.md quotes the table.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from txt2img_jax.evaluation.benchmark.pixels import NUM_COLORS
from txt2img_jax.evaluation.benchmark.scoring import (
    SUMMARY_KEYS,
    format_table,
    score,
    summarize,
    summarize_splits,
)
from txt2img_jax.data import shapes


def stack_examples(
    examples: list[dict],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  images = np.stack([e["image"] for e in examples])
  desc = {
      k: np.stack([np.asarray(e[k]) for e in examples])
      for k in ("shapes", "colors", "sizes", "cells", "num_objects")
  }
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


def render_hard_edges(
    descriptions,
    image_size: int,
    rng: np.random.Generator,
    jitter_px: float = 1.0,
) -> np.ndarray:
  """Draws every description with hard edges: a pixel takes an object's colour
  when its centre lies inside the shape (no anti-aliasing), each object
  jittered like the data. uint8 (N, S, S, 3)."""
  n = len(descriptions["num_objects"])
  small, large = shapes.size_pixels(image_size)
  out = np.zeros((n, image_size, image_size, 3), np.uint8)
  for i in range(n):
    objs = shapes.objects_from_description(
        {k: np.asarray(v)[i] for k, v in descriptions.items()}
    )
    img = np.zeros((image_size, image_size, 3), np.uint8)
    img[:] = shapes.BACKGROUND
    for o in objs:
      cy, cx = shapes.cell_center(o.cell, image_size)
      cy, cx = cy + rng.uniform(-jitter_px, jitter_px), cx + rng.uniform(
          -jitter_px, jitter_px
      )
      radius = large if o.size == 1 else small
      inside = (
          shapes.shape_mask(
              o.shape, (cy, cx), radius, image_size, supersample=1
          )
          > 0.5
      )
      img[inside] = shapes.COLOR_RGB[o.color]
    out[i] = img
  return out


def mean_of_jittered_renders(
    descriptions,
    image_size: int,
    rng: np.random.Generator,
    draws: int = 16,
    jitter_px: float = 1.0,
) -> np.ndarray:
  """Each description drawn `draws` times with the data's jitter and
  averaged: the image that minimises the expected pixel MSE to the caption's
  renders, i.e. where a deterministic caption -> image map trained with an
  MSE converges. uint8 (N, S, S, 3)."""
  n = len(descriptions["num_objects"])
  out = np.zeros((n, image_size, image_size, 3), np.uint8)
  for i in range(n):
    objs = shapes.objects_from_description(
        {k: np.asarray(v)[i] for k, v in descriptions.items()}
    )
    total = np.zeros((image_size, image_size, 3), np.float32)
    for _ in range(draws):
      jitter = rng.uniform(-jitter_px, jitter_px, size=(len(objs), 2))
      total += shapes.render(objs, image_size, jitter)
    out[i] = np.clip(np.round(total / draws), 0, 255).astype(np.uint8)
  return out


def chance_levels(descriptions) -> dict[str, float]:
  """Accuracy of an image that ignores its caption, per attribute, assuming
  the attributes are independent: colour present with probability
  (colours in an image) / num_colours, uniform cell, shape and size."""
  mean_objects = float(np.mean(descriptions["num_objects"]))
  c = mean_objects / NUM_COLORS
  p, s, z = 1 / 9, 1 / len(shapes.SHAPES), 1 / len(shapes.SIZES)
  return {
      "color_acc": c,
      "shape_acc": c * s,
      "position_acc": c * p,
      "size_acc": c * z,
      "object_acc": c * s * p * z,
      "shape_given_color": s,
      "position_given_color": p,
      "size_given_color": z,
  }


def calibrate(num: int = 500, seed: int = 0, image_size: int = 32) -> dict:
  """Scores the reference cases on `num` test-split examples.

  Returns {"render": summary, "shuffled_desc": summary,
  "pixel_shuffle": summary, "blur": summary, "hard_edges": summary,
  "jitter_mean": summary,
  "chance": chance_levels,
  "seconds": {case: scoring time}}.
  - render: the data's own jittered renders with their own descriptions;
  - shuffled_desc: the same renders scored against a permutation of the
    descriptions (a generator that ignores the caption);
  - pixel_shuffle: each render's pixels permuted within the image (the
    colour-block failure: right colours, no shapes);
  - blur: renders blurred by a Gaussian of sigma 0.7 px (soft but coherent);
  - hard_edges: the same descriptions drawn without anti-aliasing (sharp
    but coherent: edge sharpness is no fragmentation);
  - jitter_mean: the mean of 16 jittered renders of each description (the
    pixel-MSE optimum given the caption: the data's jitter alone does not
    keep a deterministic map from the caption off the benchmark).
  """
  exs = [shapes.example(seed, "test", i, image_size) for i in range(num)]
  images, desc = stack_examples(exs)
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
      "hard_edges": (render_hard_edges(desc, image_size, rng), desc),
      "jitter_mean": (mean_of_jittered_renders(desc, image_size, rng), desc),
  }
  result, seconds = {}, {}
  for name, (imgs, d) in cases.items():
    t0 = time.perf_counter()
    result[name] = summarize(score(imgs, d))
    seconds[name] = time.perf_counter() - t0
  result["chance"] = chance_levels(desc)
  result["seconds"] = seconds
  return result


def shuffle_blocks(images, block: int, rng: np.random.Generator) -> np.ndarray:
  """Permutes the (block, block) tiles of each image independently."""
  x = np.asarray(images)
  n, s = x.shape[:2]
  g = s // block
  tiles = x.reshape(n, g, block, g, block, -1).transpose(0, 1, 3, 2, 4, 5)
  tiles = tiles.reshape(n, g * g, block, block, -1)
  tiles = np.stack([t[rng.permutation(g * g)] for t in tiles])
  tiles = tiles.reshape(n, g, g, block, block, -1).transpose(0, 1, 3, 2, 4, 5)
  return tiles.reshape(x.shape)


def perturbations(
    num: int = 300, seed: int = 0, image_size: int = 32
) -> dict[str, dict]:
  """Summaries of renders under perturbations a generator's output may show
  (noise, dimmed colours, more blur: no fragmentation) and two that break
  the drawing into blocks (fragmentation)."""
  images, desc = stack_examples(
      [shapes.example(seed, "test", i, image_size) for i in range(num)]
  )
  rng = np.random.default_rng(seed)
  x = images.astype(np.float32) / 255.0
  cases = {
      "noise_0.03": np.clip(x + rng.normal(0, 0.03, x.shape), 0, 1),
      "noise_0.08": np.clip(x + rng.normal(0, 0.08, x.shape), 0, 1),
      "dimmed_0.85x+0.05": 0.85 * x + 0.05,
      "blur_1.2": blur(images, 1.2),
      "blocks_4x4_shuffled": shuffle_blocks(images, 4, rng),
      "blocks_8x8_shuffled": shuffle_blocks(images, 8, rng),
  }
  return {name: summarize(score(imgs, desc)) for name, imgs in cases.items()}


def calibration_table(cal: dict) -> str:
  cases = {k: v for k, v in cal.items() if k not in ("chance", "seconds")}
  flat = summarize_splits(cases)
  for k in SUMMARY_KEYS:
    if k in cal["chance"]:
      flat[f"chance/{k}"] = cal["chance"][k]
  return format_table(flat)
