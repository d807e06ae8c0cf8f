"""A mosaic measure that needs no knowledge of what an image shows.

The structure benchmark can call a shapes image a mosaic because it knows
what it drew. On a user's data it cannot; what it can see is the mosaic's
own signature. A DiT decodes every token independently through a linear
patch head, so when the flow goes wrong the image falls apart along the
token grid: one tile of P x P pixels (P = the autoencoder's pixels per latent
cell x the patch size) is brighter or darker than its neighbour. Two numbers,
each judged against the same number on real images of the data set, so a
blurry data set and a sharp one are both measured against themselves:

  blockiness  the energy of the image gradient across token boundaries over
              the energy inside tokens (squared differences of neighbouring
              pixels). Real images have no reason to change more at every
              P-th pixel, so their ratio is ~1 whatever they show; a mosaic's
              is large. Reported relative to the real images' ratio.
  hf          high-frequency energy: the squared Laplacian over each
              image's variance, relative to the real images'. Blur lowers
              it, pixel noise and hard tile edges raise it.

`tests/test_blockiness.py` calibrates both: real images score ~1, real
images cut into P x P tiles with shuffled tile brightness score far above 1,
blurred images keep blockiness ~1 and score low on hf. The numbers, their
thresholds and what the folder recipe draws are in docs/diagnostics.md.

Pure numpy: the folder evaluator, `diagnose` and `health` all use it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# A generated set whose blockiness is this many times the real images' is a
# mosaic (the calibration's tiled images score >= 3; real images 1 +- 0.1).
MOSAIC_BLOCKINESS = 1.5
# The bar for "as smooth as the data".
SMOOTH_BLOCKINESS = 1.2
_EPS = 1e-12


def _grey(images: np.ndarray) -> np.ndarray:
  x = np.asarray(images, np.float64)
  if x.ndim == 4:
    x = x.mean(-1)
  if x.ndim != 3:
    raise ValueError(f"images must be (N, H, W[, C]), got {x.shape}")
  return x


def boundary_energies(
    images: np.ndarray, period: int
) -> tuple[np.ndarray, np.ndarray]:
  """Per image: mean squared neighbour difference across the P-pixel grid's
  lines, and inside its cells, both directions together. (N,), (N,)."""
  x = _grey(images)
  _, h, w = x.shape
  if not (fits(period, h) and fits(period, w)):
    raise ValueError(
        f"token period {period} does not fit images of "
        f"{h}x{w}: need 2 <= period <= side / 2"
    )
  dx = np.diff(x, axis=2) ** 2  # (N, H, W-1): between columns j and j+1.
  dy = np.diff(x, axis=1) ** 2
  on_x = (np.arange(1, w) % period) == 0
  on_y = (np.arange(1, h) % period) == 0
  across = dx[:, :, on_x].sum((1, 2)) + dy[:, on_y, :].sum((1, 2))
  inside = dx[:, :, ~on_x].sum((1, 2)) + dy[:, ~on_y, :].sum((1, 2))
  n_across = h * on_x.sum() + w * on_y.sum()
  n_inside = h * (~on_x).sum() + w * (~on_y).sum()
  return across / n_across, inside / n_inside


def block_ratio(images: np.ndarray, period: int) -> float:
  """Boundary over interior gradient energy of a set (sums over images, so
  flat images weigh nothing rather than dividing by ~0)."""
  across, inside = boundary_energies(images, period)
  return float(across.sum() / (inside.sum() + _EPS))


def hf_energy(images: np.ndarray) -> float:
  """Squared 4-neighbour Laplacian over pixel variance, pooled over a set."""
  x = _grey(images)
  lap = (
      x[:, 1:-1, 2:]
      + x[:, 1:-1, :-2]
      + x[:, 2:, 1:-1]
      + x[:, :-2, 1:-1]
      - 4 * x[:, 1:-1, 1:-1]
  )
  var = x.var(axis=(1, 2))
  return float((lap**2).mean((1, 2)).sum() / (var.sum() + _EPS))


@dataclasses.dataclass(frozen=True)
class Reference:
  """The real images' own numbers, which generated images are judged by."""

  period: int
  block_ratio: float
  hf: float

  @classmethod
  def of(cls, real_images: np.ndarray, period: int) -> "Reference":
    return cls(period, block_ratio(real_images, period), hf_energy(real_images))

  def score(self, images: np.ndarray) -> dict[str, float]:
    """blockiness and hf of `images`, each relative to the real images'."""
    return {
        "blockiness": block_ratio(images, self.period)
        / max(self.block_ratio, _EPS),
        "hf": hf_energy(images) / max(self.hf, _EPS),
    }


def token_period(image_size: int, latent_side: int, patch_size: int) -> int:
  """Pixels per token side: pixels per latent cell times the DiT's patch
  size (the grid a linear patch head can break along)."""
  return image_size // latent_side * patch_size


def fits(period: int, side: int) -> bool:
  """Whether a token grid of `period` pixels has lines to measure across."""
  return 2 <= period <= side // 2


def is_mosaic(blockiness: float) -> bool:
  return blockiness > MOSAIC_BLOCKINESS


# ---------------------------------------------------------------------------
# Calibration images (used by the tests and docs/diagnostics.md).
# ---------------------------------------------------------------------------


def tiled(
    images: np.ndarray,
    period: int,
    rng: np.random.Generator,
    spread: float = 0.5,
) -> np.ndarray:
  """Real images pasted as P x P tiles, each tile's brightness shifted by a
  random amount (a shuffled set of offsets): the seed's colour blocks."""
  x = np.asarray(images, np.float64).copy()
  n, h, w = x.shape[:3]
  offsets = rng.uniform(-spread, spread, (n, -(-h // period), -(-w // period)))
  full = np.repeat(np.repeat(offsets, period, 1), period, 2)[:, :h, :w]
  if x.ndim == 4:
    full = full[..., None]
  return np.clip(x + full, 0.0, 1.0)


def blurred(images: np.ndarray, radius: int = 2) -> np.ndarray:
  """A box blur of (2 radius + 1)^2 pixels, edges replicated."""
  x = np.asarray(images, np.float64)
  k = 2 * radius + 1
  pad = [(0, 0), (radius, radius), (radius, radius)] + [(0, 0)] * (x.ndim - 3)
  p = np.pad(x, pad, mode="edge")
  c = p.cumsum(1).cumsum(2)
  c = np.pad(c, [(0, 0), (1, 0), (1, 0)] + [(0, 0)] * (x.ndim - 3))
  h, w = x.shape[1:3]
  return (
      c[:, k : k + h, k : k + w]
      - c[:, :h, k : k + w]
      - c[:, k : k + h, :w]
      + c[:, :h, :w]
  ) / (k * k)
