"""Structure benchmark, scoring: every described object's colour, shape, position and size.

Pure numpy/scipy (no JAX). `score` judges images against the structured descriptions behind
their captions; `summarize`, `summarize_splits` and `format_table` aggregate and print the
result. docs/benchmark.md has the formulas.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from txt2img_jax.evaluation.benchmark.pixels import (
    AREA_FACTOR,
    BACKGROUND_CLASS,
    CENTROID_OFFSET,
    NUM_COLORS,
    class_colors,
    classify_pixels,
    expected_areas,
    laplacian_energy,
    reference_energy,
    templates,
    to_float,
)
from txt2img_jax.data import shapes

# ---------------------------------------------------------------------------
# Thresholds (calibrated on renders; see calibrate() and docs/benchmark.md).

# A colour is present when its pixel count reaches this fraction of the
# smallest area an object of the described size can have (the triangle).
PRESENT_FRAC = 0.25
# The best-matching shape template must overlap the blob by at least this
# soft IoU for the shape to count (a 3-pixel speck is no shape at all).
MIN_SHAPE_IOU = 0.6
# ... and the blob (largest component) must hold at least this fraction of the
# smallest area any object can have (small triangle): a 1-pixel speck is a
# perfect tiny "square" otherwise.
MIN_BLOB_FRAC = 0.4
# The high-frequency term is log(E / E_ref) / log(HF_SCALE), floored at 0:
# it reaches 1 when the Laplacian energy is HF_SCALE times the reference's.
HF_SCALE = 4.0
# Shape templates are also compared blurred by these Gaussian sigmas (pixels),
# taking the best match, so soft but coherent drawings are not punished.
TEMPLATE_SIGMAS = (0.0, 0.5, 0.8, 1.1)

PER_OBJECT_KEYS = (
    "valid",
    "color_ok",
    "shape_ok",
    "position_ok",
    "size_ok",
    "object_ok",
    "pixel_count",
    "pred_shape",
    "shape_iou",
    "pred_cell",
    "pred_size",
    "radius",
    "centroid",
    "num_components",
    "outside_frac",
)
PER_IMAGE_KEYS = (
    "image_ok",
    "num_objects",
    "mosaic",
    "fragmentation",
    "stray",
    "hf_ratio",
    "hf",
)
# Per number of objects in the caption: composing two objects (binding each
# colour, shape and size to its place) fails long after one object is drawn.
BY_COUNT_KEYS = tuple(
    f"{m}_{k}obj"
    for k in range(1, shapes.MAX_OBJECTS + 1)
    for m in ("color_acc", "object_acc")
)
SUMMARY_KEYS = (
    "color_acc",
    "shape_acc",
    "position_acc",
    "size_acc",
    "object_acc",
    "image_acc",
    "mosaic",
    "fragmentation",
    "stray",
    "hf",
    "num_images",
    "num_objects",
) + BY_COUNT_KEYS


# ---------------------------------------------------------------------------
# Scoring.


def score(images, descriptions) -> dict[str, np.ndarray]:
  """Scores images against their descriptions.

  images: (N, S, S, 3) uint8, or float in [0, 1] (clipped).
  descriptions: dict with "shapes", "colors", "sizes", "cells" (N, MAX_OBJECTS)
    padded with -1, and "num_objects" (N,), as stacked `shapes.describe`.

  Returns a dict. Per object, (N, MAX_OBJECTS) (False/0/-1 on padding):
    valid, color_ok, shape_ok, position_ok, size_ok, object_ok (bool);
    pixel_count (int, pixels of the object's colour), pred_shape, pred_cell,
    pred_size (int, -1 when the colour is absent), shape_iou, radius
    (float), centroid (N, MAX_OBJECTS, 2) float (row, col), num_components
    (int), outside_frac (float, colour pixels outside the largest component).
  Per image, (N,): image_ok (bool), num_objects (int), mosaic, fragmentation,
    stray, hf_ratio, hf (float).
  """
  x = to_float(images)
  n, size = x.shape[0], x.shape[1]
  desc = {
      k: np.asarray(descriptions[k])
      for k in ("shapes", "colors", "sizes", "cells", "num_objects")
  }
  if len(desc["num_objects"]) != n:
    raise ValueError("images and descriptions disagree on N")
  max_obj = desc["colors"].shape[1]
  valid = np.arange(max_obj)[None, :] < desc["num_objects"][:, None]
  classes, alpha = classify_pixels(x)

  # One binary mask per (image, object) slot, labelled in one call: the
  # structure connects 8-neighbours within a slice, never across slices.
  obj_img, obj_slot = np.nonzero(valid)
  obj_color = desc["colors"][obj_img, obj_slot].astype(np.int64)
  m = len(obj_img)
  masks = classes[obj_img] == obj_color[:, None, None]
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True
  labels, num_labels = ndimage.label(masks, structure=structure)
  comp_size = np.bincount(labels.ravel(), minlength=num_labels + 1)
  comp_mask = np.zeros(num_labels + 1, np.int64)
  flat = labels.reshape(m, -1)
  rows = np.broadcast_to(np.arange(m)[:, None], flat.shape)
  comp_mask[flat.ravel()] = rows.ravel()
  comp_ids = np.arange(1, num_labels + 1)
  num_components = np.bincount(comp_mask[1:], minlength=m)[:m]
  pixel_count = masks.reshape(m, -1).sum(1)
  # Largest component per mask: sort by (mask, size) and take the last.
  order = np.lexsort((comp_size[1:], comp_mask[1:]))
  largest = np.zeros(m, np.int64)
  largest[comp_mask[1:][order]] = comp_ids[order]
  largest_size = np.where(num_components > 0, comp_size[largest], 0)
  outside = np.where(
      pixel_count > 0, 1.0 - largest_size / np.maximum(pixel_count, 1), 0.0
  )

  # Colour presence.
  min_area = expected_areas(size).min(axis=0)  # per size
  obj_size = desc["sizes"][obj_img, obj_slot].astype(np.int64)
  present = pixel_count >= PRESENT_FRAC * min_area[obj_size]

  # The blob: largest component, dilated by two pixels to take in soft edges,
  # restricted to pixels of this colour or background; soft coverage alpha.
  blob = (labels == largest[:, None, None]) & (largest[:, None, None] > 0)
  blob = ndimage.binary_dilation(blob, structure=structure, iterations=2)
  cls_obj = classes[obj_img]
  blob &= (cls_obj == obj_color[:, None, None]) | (cls_obj == BACKGROUND_CLASS)
  a = np.where(blob, alpha[obj_img, :, :, obj_color], 0.0).astype(np.float32)
  area = a.sum(axis=(1, 2))
  coords = np.arange(size, dtype=np.float32) + 0.5
  safe = np.maximum(area, 1e-6)
  cy = (a.sum(2) * coords).sum(1) / safe
  cx = (a.sum(1) * coords).sum(1) / safe
  centroid = np.stack([cy, cx], -1)

  # Shape: soft IoU with each shape's template of the same area and centroid.
  ious = np.zeros((m, len(shapes.SHAPES)), np.float32)
  radii_s = np.sqrt(area[:, None] / AREA_FACTOR[None, :])
  for s in range(len(shapes.SHAPES)):
    r = np.maximum(radii_s[:, s], 1e-3)
    ctr = centroid - np.stack([CENTROID_OFFSET[s] * r, np.zeros_like(r)], -1)
    sharp = templates(s, ctr, r, size)
    for sigma in TEMPLATE_SIGMAS:
      t = (
          sharp
          if sigma == 0
          else ndimage.gaussian_filter(
              sharp, sigma=(0, sigma, sigma), mode="constant"
          )
      )
      inter = np.minimum(a, t).sum(axis=(1, 2))
      union = np.maximum(a, t).sum(axis=(1, 2))
      ious[:, s] = np.maximum(ious[:, s], inter / np.maximum(union, 1e-6))
  pred_shape = ious.argmax(1)
  best_iou = ious.max(1)
  radius = radii_s[np.arange(m), pred_shape]

  small, large = shapes.size_pixels(size)
  pred_size = (radius > np.sqrt(small * large)).astype(np.int64)
  step = size / 3
  row = np.clip((cy // step).astype(np.int64), 0, 2)
  col = np.clip((cx // step).astype(np.int64), 0, 2)
  pred_cell = row * 3 + col

  color_ok = present
  shape_ok = (
      present
      & (pred_shape == desc["shapes"][obj_img, obj_slot])
      & (best_iou >= MIN_SHAPE_IOU)
      & (largest_size >= MIN_BLOB_FRAC * expected_areas(size).min())
  )
  position_ok = present & (pred_cell == desc["cells"][obj_img, obj_slot])
  size_ok = present & (pred_size == obj_size)
  object_ok = color_ok & shape_ok & position_ok & size_ok

  def scatter(values, fill, dtype):
    out = np.full((n, max_obj) + np.shape(values)[1:], fill, dtype)
    out[obj_img, obj_slot] = values
    return out

  out = {
      "valid": valid,
      "color_ok": scatter(color_ok, False, bool),
      "shape_ok": scatter(shape_ok, False, bool),
      "position_ok": scatter(position_ok, False, bool),
      "size_ok": scatter(size_ok, False, bool),
      "object_ok": scatter(object_ok, False, bool),
      "pixel_count": scatter(pixel_count, 0, np.int64),
      "pred_shape": scatter(np.where(present, pred_shape, -1), -1, np.int64),
      "shape_iou": scatter(np.where(present, best_iou, 0.0), 0.0, np.float32),
      "pred_cell": scatter(np.where(present, pred_cell, -1), -1, np.int64),
      "pred_size": scatter(np.where(present, pred_size, -1), -1, np.int64),
      "radius": scatter(np.where(present, radius, 0.0), 0.0, np.float32),
      "centroid": scatter(
          np.where(present[:, None], centroid, np.nan), np.nan, np.float32
      ),
      "num_components": scatter(num_components, 0, np.int64),
      "outside_frac": scatter(outside, 0.0, np.float32),
  }
  out["image_ok"] = (out["object_ok"] | ~valid).all(1) & (
      desc["num_objects"] > 0
  )
  out["num_objects"] = desc["num_objects"].astype(np.int64)

  # Mosaic index.
  # (a) fragmentation, per object with any pixels of its colour:
  #     0.5 * (1 - 1/num_components) + 0.5 * outside_frac; mean over them.
  has_px = out["pixel_count"] > 0
  frag_obj = 0.5 * (1.0 - 1.0 / np.maximum(out["num_components"], 1)) + (
      0.5 * out["outside_frac"]
  )
  frag = np.where(has_px, frag_obj, 0.0).sum(1) / np.maximum(has_px.sum(1), 1)
  # (b) stray: fraction of non-background pixels of no described colour
  #     (ambiguous pixels included).
  expected = np.zeros((n, NUM_COLORS), bool)
  expected[obj_img, obj_color] = True
  nonbg = classes != BACKGROUND_CLASS
  is_expected = np.take_along_axis(
      expected, np.clip(classes, 0, None).reshape(n, -1).astype(np.int64), 1
  ).reshape(classes.shape) & (classes >= 0)
  stray = (nonbg & ~is_expected).sum((1, 2)) / np.maximum(nonbg.sum((1, 2)), 1)
  # (c) high frequency: Laplacian energy of the image's class map relative to
  #     the reference render's (cell centres, no jitter). On the class map
  #     every edge is hard, so the term counts region boundaries (how broken
  #     up the drawing is), not anti-aliasing: a hard-edged perfect render
  #     scored 0.30 when the energy was taken on alpha-weighted colours.
  energy = laplacian_energy(class_colors(x, (classes, alpha)))
  ref_energy = reference_energy(descriptions, size)
  hf_ratio = energy / np.maximum(ref_energy, 1e-6)
  hf = np.maximum(0.0, np.log(np.maximum(hf_ratio, 1e-12))) / np.log(HF_SCALE)
  out["fragmentation"] = frag.astype(np.float32)
  out["stray"] = stray.astype(np.float32)
  out["hf_ratio"] = hf_ratio.astype(np.float32)
  out["hf"] = hf.astype(np.float32)
  out["mosaic"] = (frag + stray + hf).astype(np.float32)
  return out


# ---------------------------------------------------------------------------
# Aggregation and reporting.


def summarize(scores: dict[str, np.ndarray]) -> dict[str, float]:
  """Aggregates of one `score` result. Accuracies are over described objects
  (an object whose colour is absent fails shape/position/size too);
  image_acc over images; mosaic etc. are means over images."""
  valid = scores["valid"]
  nobj = max(int(valid.sum()), 1)

  def acc(key):
    return float((scores[key] & valid).sum() / nobj)

  by_count = {}
  for k in range(1, shapes.MAX_OBJECTS + 1):
    # Objects of the images that describe exactly k objects (0 if none).
    sel = valid & (np.asarray(scores["num_objects"]) == k)[:, None]
    for m, key in (("color_acc", "color_ok"), ("object_acc", "object_ok")):
      by_count[f"{m}_{k}obj"] = float(
          (scores[key] & sel).sum() / max(int(sel.sum()), 1)
      )

  return {
      "color_acc": acc("color_ok"),
      "shape_acc": acc("shape_ok"),
      "position_acc": acc("position_ok"),
      "size_acc": acc("size_ok"),
      "object_acc": acc("object_ok"),
      "image_acc": float(np.mean(scores["image_ok"])) if len(valid) else 0.0,
      "mosaic": float(np.mean(scores["mosaic"])) if len(valid) else 0.0,
      "fragmentation": float(np.mean(scores["fragmentation"]))
      if len(valid)
      else 0.0,
      "stray": float(np.mean(scores["stray"])) if len(valid) else 0.0,
      "hf": float(np.mean(scores["hf"])) if len(valid) else 0.0,
      "num_images": float(len(valid)),
      "num_objects": float(valid.sum()),
      **by_count,
  }


def summarize_splits(scores_by_split: dict[str, dict]) -> dict[str, float]:
  """{"eval": scores, "heldout": scores} -> {"eval/object_acc": ..., ...}.

  Each value may be a `score` result or an already `summarize`d dict."""
  flat = {}
  for split, sc in scores_by_split.items():
    summary = summarize(sc) if "valid" in sc else sc
    for k, v in summary.items():
      flat[f"{split}/{k}"] = float(v)
  return flat


def shape_confusion(scores, descriptions) -> dict[str, dict[str, float]]:
  """Which shape was drawn for each described one, among the objects whose
  colour was found: {described: {circle|square|triangle|unclear: fraction,
  "objects": count}}. A shape that is right counts as itself; a wrong one as
  the best-matching template; "unclear": the best match is the described
  shape but the blob is too small or too far from every template."""
  found = np.asarray(scores["color_ok"], bool)
  described = np.asarray(descriptions["shapes"])
  drawn = np.where(
      np.asarray(scores["shape_ok"], bool),
      described,
      np.asarray(scores["pred_shape"]),
  )
  unclear = ~np.asarray(scores["shape_ok"], bool) & (drawn == described)
  out = {}
  for i, name in enumerate(shapes.SHAPES):
    mine = found & (described == i)
    n = int(mine.sum())
    row = {
        other: float((mine & (drawn == j) & ~unclear).sum()) / max(n, 1)
        for j, other in enumerate(shapes.SHAPES)
    }
    row["unclear"] = float((mine & unclear).sum()) / max(n, 1)
    row["objects"] = n
    out[name] = row
  return out


def format_confusion(by_split: dict[str, dict]) -> str:
  """`shape_confusion` of each split as console lines."""
  lines = []
  for split, confusion in by_split.items():
    for name, row in confusion.items():
      drawn = ", ".join(
          f"{k} {v:.2f}" for k, v in row.items() if k != "objects"
      )
      lines.append(
          f"{split:>8} {name:>8} ({row['objects']:4d}) drawn as: " f"{drawn}"
      )
  return "\n".join(lines)


def format_table(summary: dict[str, float]) -> str:
  """A console table: one row per metric, one column per split prefix
  ("split/metric" keys) or a single "value" column for unprefixed keys."""
  columns: dict[str, dict[str, float]] = {}
  metrics: list[str] = []
  for key, value in summary.items():
    split, _, metric = key.rpartition("/")
    split = split or "value"
    columns.setdefault(split, {})[metric] = value
    if metric not in metrics:
      metrics.append(metric)
  order = [k for k in SUMMARY_KEYS if k in metrics]
  order += [k for k in metrics if k not in order]
  names = list(columns)
  width = max([len(m) for m in order] + [6])
  colw = max([len(s) for s in names] + [8])
  lines = [" " * width + " | " + " | ".join(s.rjust(colw) for s in names)]
  lines.append("-" * len(lines[0]))
  for metric in order:
    cells = []
    for s in names:
      v = columns[s].get(metric)
      if v is None:
        cells.append("".rjust(colw))
      elif metric.startswith("num_"):
        cells.append(f"{int(v)}".rjust(colw))
      else:
        cells.append(f"{v:.3f}".rjust(colw))
    lines.append(metric.ljust(width) + " | " + " | ".join(cells))
  return "\n".join(lines)
