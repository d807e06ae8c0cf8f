"""Structure benchmark: scores generated images against the captions' descriptions.

Pure numpy/scipy (no JAX). Given images (N, S, S, 3) (uint8, or float in
[0, 1]) and the structured descriptions behind their captions (the dict of
`shapes.describe` arrays with a leading N axis), `score` reports for every
described object whether its colour, shape, position (3x3 cell) and size are
right, and for every image a *mosaic index* that is ~0 for one coherent shape
per object and rises when the drawing breaks into fragments, stray colours or
high-frequency blocks: the failure mode where colour statistics are learned but
shapes never form. See docs/benchmark.md for the formulas and the calibration.

Public API:
  score(images, descriptions) -> dict of per-object (N, MAX_OBJECTS) and
      per-image (N,) arrays.
  summarize(scores) -> dict[str, float]
  summarize_splits({split: scores}) -> {"split/metric": float}
  format_table(summary) -> str
  calibrate(num=500, seed=0, image_size=32) -> dict
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from txt2img_jax.data import shapes

# ---------------------------------------------------------------------------
# Thresholds (calibrated on renders; see calibrate() and docs/benchmark.md).

# A pixel belongs to colour k when it lies within this RGB distance (0-1 scale)
# of the segment black -> COLOR_RGB[k] (the colours an anti-aliased or blurred
# edge on black can take) and its coverage along that segment is >= 0.5.
# Pixels farther than this from every segment are "ambiguous" (no colour).
COLOR_DIST = 60.0 / 255.0
MIN_COVERAGE = 0.5
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

BACKGROUND_CLASS = -1
AMBIGUOUS_CLASS = -2

_PALETTE = shapes.COLOR_RGB.astype(np.float64) / 255.0  # (K, 3)
_PALETTE_SQ = (_PALETTE ** 2).sum(-1)  # (K,)
_NUM_COLORS = len(shapes.COLOR_NAMES)

# Shape geometry in units of the radius r (see shapes.shape_mask):
# area factor (area = f * r^2) and the offset of the area centroid below the
# shape's nominal centre (the triangle's apex is at -r, its base at +0.9 r).
_AREA_FACTOR = np.array([np.pi, 1.8 ** 2, 0.5 * 2.0 * 1.9])
_CENTROID_OFFSET = np.array([0.0, 0.0, -1.0 + 2.0 / 3.0 * 1.9])

PER_OBJECT_KEYS = (
    "valid", "color_ok", "shape_ok", "position_ok", "size_ok", "object_ok",
    "pixel_count", "pred_shape", "shape_iou", "pred_cell", "pred_size",
    "radius", "centroid", "num_components", "outside_frac")
PER_IMAGE_KEYS = (
    "image_ok", "num_objects", "mosaic", "fragmentation", "stray", "hf_ratio",
    "hf")
SUMMARY_KEYS = (
    "color_acc", "shape_acc", "position_acc", "size_acc", "object_acc",
    "image_acc", "mosaic", "fragmentation", "stray", "hf", "num_images",
    "num_objects")


# ---------------------------------------------------------------------------
# Pixel classification.

def _to_float(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
    raise ValueError(f"expected images (N, S, S, 3), got {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return np.clip(images.astype(np.float32), 0.0, 1.0)


def classify_pixels(images) -> tuple[np.ndarray, np.ndarray]:
  """Per-pixel colour class and per-colour coverage.

  Returns (classes (N, S, S) int8, alpha (N, S, S, K) float32):
  classes is the colour index 0..K-1, BACKGROUND_CLASS (-1) or
  AMBIGUOUS_CLASS (-2); alpha[..., k] is the pixel's coverage along the
  segment black -> colour k, clipped to [0, 1].
  """
  x = _to_float(images)
  flat = x.reshape(-1, 3)
  pal = _PALETTE.astype(np.float32)
  pal_sq = _PALETTE_SQ.astype(np.float32)
  dot = flat @ pal.T  # (P, K)
  alpha = np.clip(dot / pal_sq, 0.0, 1.0)
  # |x - a c|^2 = |x|^2 - 2 a x.c + a^2 |c|^2
  sq = np.einsum("pc,pc->p", flat, flat)[:, None]
  dist2 = sq + alpha * (alpha * pal_sq - 2 * dot)
  best = dist2.argmin(-1)
  rows = np.arange(len(flat))
  best_d2 = dist2[rows, best]
  best_a = alpha[rows, best]
  classes = best.astype(np.int8)
  classes[best_a < MIN_COVERAGE] = BACKGROUND_CLASS
  classes[best_d2 > COLOR_DIST ** 2] = AMBIGUOUS_CLASS
  classes = classes.reshape(x.shape[:3])
  alpha = alpha.reshape(x.shape[:3] + (len(pal),))
  return classes, alpha


def quantize(images, classified=None) -> np.ndarray:
  """Each pixel replaced by what its class says: black for background, the
  projection alpha*colour for a colour, itself when ambiguous. Removes faint
  background noise before measuring high-frequency energy. `classified`:
  optional precomputed classify_pixels(images)."""
  x = _to_float(images)
  classes, alpha = classified if classified is not None else (
      classify_pixels(x))
  k = np.clip(classes, 0, None).astype(np.int64)
  a = np.take_along_axis(alpha, k[..., None], -1)
  q = a * _PALETTE[k].astype(np.float32)
  q[classes == BACKGROUND_CLASS] = 0.0
  amb = classes == AMBIGUOUS_CLASS
  q[amb] = x[amb]
  return q


def laplacian_energy(images) -> np.ndarray:
  """Sum over pixels and channels of the squared 5-point Laplacian, (N,)."""
  q = np.asarray(images, np.float32)
  lap = np.zeros_like(q)
  for axis in (1, 2):
    lap += ndimage.correlate1d(q, [1.0, -2.0, 1.0], axis=axis, mode="nearest")
  return (lap ** 2).sum(axis=(1, 2, 3))


# ---------------------------------------------------------------------------
# Geometry helpers.

def _templates(shape: int, centers: np.ndarray, radii: np.ndarray,
               image_size: int, supersample: int = 4,
               chunk: int = 128) -> np.ndarray:
  """Anti-aliased coverage (M, S, S) of one shape at M centres/radii, batched
  (same geometry as shapes.shape_mask)."""
  m = len(radii)
  out = np.zeros((m, image_size, image_size), np.float32)
  n = image_size * supersample
  coords = ((np.arange(n) + 0.5) / supersample).astype(np.float32)
  for s in range(0, m, chunk):
    c = centers[s:s + chunk].astype(np.float32)
    r = radii[s:s + chunk].astype(np.float32)[:, None, None]
    dy = coords[None, :, None] - c[:, 0, None, None]
    dx = coords[None, None, :] - c[:, 1, None, None]
    name = shapes.SHAPES[shape]
    if name == "circle":
      inside = dy * dy + dx * dx <= r * r
    elif name == "square":
      half = 0.9 * r
      inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    else:
      frac = (dy + r) / (1.9 * r)
      inside = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * r)
    cover = inside.reshape(len(c), image_size, supersample, image_size,
                           supersample)
    out[s:s + chunk] = cover.mean(axis=(2, 4))
  return out


def _reference_energy(descriptions, image_size: int) -> np.ndarray:
  """Laplacian energy of each description rendered at the cell centres."""
  n = len(descriptions["num_objects"])
  index: dict[tuple, int] = {}
  refs, which = [], np.zeros(n, np.int64)
  for i in range(n):
    desc = {k: np.asarray(v)[i] for k, v in descriptions.items()}
    objs = shapes.objects_from_description(desc)
    key = tuple((o.shape, o.color, o.size, o.cell) for o in objs)
    if key not in index:
      index[key] = len(refs)
      refs.append(shapes.render(objs, image_size))
    which[i] = index[key]
  if not refs:
    return np.zeros(0)
  energy = laplacian_energy(quantize(np.stack(refs)))
  return energy[which].astype(np.float64)


def expected_areas(image_size: int) -> np.ndarray:
  """(num_shapes, num_sizes) area in pixels of each shape at each size."""
  radii = np.array(shapes.size_pixels(image_size))
  return _AREA_FACTOR[:, None] * radii[None, :] ** 2


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
  x = _to_float(images)
  n, size = x.shape[0], x.shape[1]
  desc = {k: np.asarray(descriptions[k]) for k in
          ("shapes", "colors", "sizes", "cells", "num_objects")}
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
  outside = np.where(pixel_count > 0,
                     1.0 - largest_size / np.maximum(pixel_count, 1), 0.0)

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
  radii_s = np.sqrt(area[:, None] / _AREA_FACTOR[None, :])
  for s in range(len(shapes.SHAPES)):
    r = np.maximum(radii_s[:, s], 1e-3)
    ctr = centroid - np.stack([_CENTROID_OFFSET[s] * r, np.zeros_like(r)], -1)
    sharp = _templates(s, ctr, r, size)
    for sigma in TEMPLATE_SIGMAS:
      t = sharp if sigma == 0 else ndimage.gaussian_filter(
          sharp, sigma=(0, sigma, sigma), mode="constant")
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
  shape_ok = present & (pred_shape == desc["shapes"][obj_img, obj_slot]) & (
      best_iou >= MIN_SHAPE_IOU) & (
          largest_size >= MIN_BLOB_FRAC * expected_areas(size).min())
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
      "centroid": scatter(np.where(present[:, None], centroid, np.nan),
                          np.nan, np.float32),
      "num_components": scatter(num_components, 0, np.int64),
      "outside_frac": scatter(outside, 0.0, np.float32),
  }
  out["image_ok"] = (out["object_ok"] | ~valid).all(1) & (
      desc["num_objects"] > 0)
  out["num_objects"] = desc["num_objects"].astype(np.int64)

  # Mosaic index.
  # (a) fragmentation, per object with any pixels of its colour:
  #     0.5 * (1 - 1/num_components) + 0.5 * outside_frac; mean over them.
  has_px = out["pixel_count"] > 0
  frag_obj = 0.5 * (1.0 - 1.0 / np.maximum(out["num_components"], 1)) + (
      0.5 * out["outside_frac"])
  frag = np.where(has_px, frag_obj, 0.0).sum(1) / np.maximum(
      has_px.sum(1), 1)
  # (b) stray: fraction of non-background pixels of no described colour
  #     (ambiguous pixels included).
  expected = np.zeros((n, _NUM_COLORS), bool)
  expected[obj_img, obj_color] = True
  nonbg = classes != BACKGROUND_CLASS
  is_expected = np.take_along_axis(
      expected, np.clip(classes, 0, None).reshape(n, -1).astype(np.int64),
      1).reshape(classes.shape) & (classes >= 0)
  stray = (nonbg & ~is_expected).sum((1, 2)) / np.maximum(
      nonbg.sum((1, 2)), 1)
  # (c) high frequency: Laplacian energy of the quantised image relative to
  #     the quantised reference render (cell centres, no jitter).
  energy = laplacian_energy(quantize(x, (classes, alpha)))
  ref_energy = _reference_energy(descriptions, size)
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

  return {
      "color_acc": acc("color_ok"),
      "shape_acc": acc("shape_ok"),
      "position_acc": acc("position_ok"),
      "size_acc": acc("size_ok"),
      "object_acc": acc("object_ok"),
      "image_acc": float(np.mean(scores["image_ok"])) if len(valid) else 0.0,
      "mosaic": float(np.mean(scores["mosaic"])) if len(valid) else 0.0,
      "fragmentation": float(np.mean(scores["fragmentation"])) if len(valid) else 0.0,
      "stray": float(np.mean(scores["stray"])) if len(valid) else 0.0,
      "hf": float(np.mean(scores["hf"])) if len(valid) else 0.0,
      "num_images": float(len(valid)),
      "num_objects": float(valid.sum()),
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


# ---------------------------------------------------------------------------
# Calibration.

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
  c = mean_objects / _NUM_COLORS
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


def main() -> None:
  cal = calibrate()
  print(calibration_table(cal))
  exs = [shapes.example(1, "test", i) for i in range(1000)]
  images, desc = _stack(exs)
  score(images[:10], {k: v[:10] for k, v in desc.items()})  # warm up
  t0 = time.perf_counter()
  score(images, desc)
  print(f"score(): 1000 images of 32x32 in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
  main()
