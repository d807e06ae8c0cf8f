"""Fréchet distance and KID between two sets of image features.

The numbers users compare runs by, computed on features of a frozen image
network (`evaluation/features.py`). The Fréchet distance (FD) compares the
Gaussians fitted to the two feature sets; with the FID Inception network's
pool3 features it is the FID. It is biased upwards for small sets: compare
FDs only at the same number of images. KID (the unbiased squared MMD with
the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3) has no such bias
and is the number for the few hundred images a CPU run draws; it is
reported with its std over random subsets.

Features are gathered in batches: `Moments` keeps running sums (float64),
so the statistics of 50k images never hold them all; `KID` works on at
most `max_features` of each set, kept as a uniform sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Moments:
  """Running mean and covariance of feature rows."""

  n: int = 0
  total: np.ndarray | None = None
  outer: np.ndarray | None = None

  def add(self, features: np.ndarray) -> "Moments":
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    if self.total is None:
      d = f.shape[1]
      self.total, self.outer = np.zeros(d), np.zeros((d, d))
    self.n += len(f)
    self.total += f.sum(0)
    self.outer += f.T @ f
    return self

  @property
  def mean(self) -> np.ndarray:
    return self.total / self.n

  @property
  def cov(self) -> np.ndarray:
    """The unbiased covariance (as numpy.cov)."""
    if self.n < 2:
      raise ValueError(f"a covariance needs >= 2 feature rows, got {self.n}")
    mu = self.mean
    return (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)

  def to_arrays(self) -> dict[str, np.ndarray]:
    return {"n": np.int64(self.n), "mean": self.mean, "cov": self.cov}


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
  """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).

  tr((C1 C2)^(1/2)) is the sum of the square roots of the eigenvalues of
  C1 C2, which are those of the symmetric S C2 S with S = C1^(1/2): real
  and >= 0 up to rounding, so no complex square root and no retry with an
  added eps is needed (the usual scipy.linalg.sqrtm route).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  c1, c2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  w, v = np.linalg.eigh((c1 + c1.T) / 2)
  s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = s @ c2 @ s
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt)


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """The unbiased MMD^2 of two equal-size samples, kernel (x.y/d + 1)^3."""
  d = x.shape[1]
  kxx = (x @ x.T / d + 1) ** 3
  kyy = (y @ y.T / d + 1) ** 3
  kxy = (x @ y.T / d + 1) ** 3
  m = len(x)
  off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
  return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
  """(mean, std) of the unbiased MMD^2 over `num_subsets` random subsets of
  min(subset_size, len(real), len(fake)) rows of each set."""
  real = np.asarray(real, np.float64)
  fake = np.asarray(fake, np.float64)
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise ValueError(f"KID needs >= 2 images in each set, got {m}")
  rng = np.random.default_rng(seed)
  values = [
      _poly_mmd2(
          real[rng.choice(len(real), m, replace=False)],
          fake[rng.choice(len(fake), m, replace=False)],
      )
      for _ in range(num_subsets)
  ]
  return float(np.mean(values)), float(np.std(values))


class Sample:
  """A uniform sample of at most `size` feature rows of a stream
  (reservoir sampling, seeded): KID's input without keeping them all."""

  def __init__(self, size: int, seed: int = 0):
    self.size, self.seen = size, 0
    self.rows: list[np.ndarray] = []
    self._rng = np.random.default_rng(seed)

  def add(self, features: np.ndarray) -> "Sample":
    for row in np.asarray(features, np.float32):
      if len(self.rows) < self.size:
        self.rows.append(row)
      else:
        j = self._rng.integers(0, self.seen + 1)
        if j < self.size:
          self.rows[j] = row
      self.seen += 1
    return self

  def array(self) -> np.ndarray:
    return np.stack(self.rows) if self.rows else np.zeros((0, 0), np.float32)
