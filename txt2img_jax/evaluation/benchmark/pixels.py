"""Structure benchmark, pixel level: each pixel's colour class, and shape templates.

Pure numpy/scipy. `benchmark_scoring.score` builds on these: a pixel belongs to one of the
shapes set's colours, to the background, or to no colour at all ("ambiguous"); the shape
templates share `shapes.shape_mask`'s geometry.
"""

from __future__ import annotations

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

BACKGROUND_CLASS = -1
AMBIGUOUS_CLASS = -2

_PALETTE = shapes.COLOR_RGB.astype(np.float64) / 255.0  # (K, 3)
_PALETTE_SQ = (_PALETTE**2).sum(-1)  # (K,)
NUM_COLORS = len(shapes.COLOR_NAMES)

# Shape geometry in units of the radius r (see shapes.shape_mask):
# area factor (area = f * r^2) and the offset of the area centroid below the
# shape's nominal centre (the triangle's apex is at -r, its base at +0.9 r).
AREA_FACTOR = np.array([np.pi, 1.8**2, 0.5 * 2.0 * 1.9])
CENTROID_OFFSET = np.array([0.0, 0.0, -1.0 + 2.0 / 3.0 * 1.9])


# ---------------------------------------------------------------------------
# Pixel classification.


def to_float(images) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if (
      images.ndim != 4
      or images.shape[-1] != 3
      or images.shape[1] != images.shape[2]
  ):
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
  x = to_float(images)
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
  classes[best_d2 > COLOR_DIST**2] = AMBIGUOUS_CLASS
  classes = classes.reshape(x.shape[:3])
  alpha = alpha.reshape(x.shape[:3] + (len(pal),))
  return classes, alpha


def quantize(images, classified=None) -> np.ndarray:
  """Each pixel replaced by what its class says: black for background, the
  projection alpha*colour for a colour, itself when ambiguous. Removes faint
  background noise before measuring high-frequency energy. `classified`:
  optional precomputed classify_pixels(images)."""
  x = to_float(images)
  classes, alpha = (
      classified if classified is not None else (classify_pixels(x))
  )
  k = np.clip(classes, 0, None).astype(np.int64)
  a = np.take_along_axis(alpha, k[..., None], -1)
  q = a * _PALETTE[k].astype(np.float32)
  q[classes == BACKGROUND_CLASS] = 0.0
  amb = classes == AMBIGUOUS_CLASS
  q[amb] = x[amb]
  return q


def class_colors(images, classified=None) -> np.ndarray:
  """Each pixel replaced by the full colour of its class: black for
  background, the palette colour for a colour (whatever its coverage), itself
  when ambiguous. The drawing's class map: an anti-aliased and a hard-edged
  drawing of the same shape give the same map, so high-frequency energy
  measured on it counts boundaries between regions (fragments), not how soft
  each boundary is. `classified`: optional precomputed classify_pixels(images).
  """
  x = to_float(images)
  classes, _ = classified if classified is not None else classify_pixels(x)
  k = np.clip(classes, 0, None).astype(np.int64)
  q = _PALETTE[k].astype(np.float32)
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
  return (lap**2).sum(axis=(1, 2, 3))


# ---------------------------------------------------------------------------
# Geometry helpers.


def templates(
    shape: int,
    centers: np.ndarray,
    radii: np.ndarray,
    image_size: int,
    supersample: int = 4,
    chunk: int = 128,
) -> np.ndarray:
  """Anti-aliased coverage (M, S, S) of one shape at M centres/radii, batched
  (same geometry as shapes.shape_mask)."""
  m = len(radii)
  out = np.zeros((m, image_size, image_size), np.float32)
  n = image_size * supersample
  coords = ((np.arange(n) + 0.5) / supersample).astype(np.float32)
  for s in range(0, m, chunk):
    c = centers[s : s + chunk].astype(np.float32)
    r = radii[s : s + chunk].astype(np.float32)[:, None, None]
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
    cover = inside.reshape(
        len(c), image_size, supersample, image_size, supersample
    )
    out[s : s + chunk] = cover.mean(axis=(2, 4))
  return out


def reference_energy(descriptions, image_size: int) -> np.ndarray:
  """Laplacian energy of the class map (`class_colors`) of each description
  rendered at the cell centres."""
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
  energy = laplacian_energy(class_colors(np.stack(refs)))
  return energy[which].astype(np.float64)


def expected_areas(image_size: int) -> np.ndarray:
  """(num_shapes, num_sizes) area in pixels of each shape at each size."""
  radii = np.array(shapes.size_pixels(image_size))
  return AREA_FACTOR[:, None] * radii[None, :] ** 2
