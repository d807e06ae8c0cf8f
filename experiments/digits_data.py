"""The handwritten digits as a user's own images, and the classifier that
reads them back.

scikit-learn ships the 1,797 8x8 digits offline. `write` turns them into a
folder of PNGs and a `metadata.jsonl` of captions (the layout configs/folder.py
reads); `Classifier` reads a digit off an image that went the same way, so a
sample can be checked against its caption. Needs scikit-learn.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
TEMPLATES = (
    "a handwritten digit {w}",
    "digit {d}",
    "the number {w} written by hand",
    "a {w}",
    "handwritten {d}",
    "the digit {w}",
)


def captions(d: int) -> list[str]:
  return [t.format(w=WORDS[d], d=d) for t in TEMPLATES]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(N, 8, 8) ink in [0, 1] and (N,) labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  d = datasets.load_digits()
  return d.images.astype(np.float64) / 16.0, d.target.astype(np.int64)


def to_pixels(ink: np.ndarray, size: int) -> np.ndarray:
  """8x8 ink -> (size, size, 3) uint8, dark ink on white, bicubic."""
  grey = Image.fromarray(((1.0 - ink) * 255).round().astype(np.uint8))
  grey = grey.resize((size, size), Image.Resampling.BICUBIC)
  return np.repeat(np.asarray(grey)[..., None], 3, axis=-1)


def write(out_dir: str, size: int = 32) -> int:
  ink, labels = load_digits()
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metadata.jsonl"), "w") as f:
    for i, (x, y) in enumerate(zip(ink, labels)):
      name = f"{y}/{i:04d}.png"
      os.makedirs(os.path.join(out_dir, str(y)), exist_ok=True)
      Image.fromarray(to_pixels(x, size)).save(os.path.join(out_dir, name))
      f.write(json.dumps({"file_name": name, "text": captions(int(y))}) + "\n")
  return len(labels)


def to_ink8(images: np.ndarray) -> np.ndarray:
  """(N, S, S, 3) in [0, 1] -> (N, 64) ink by area averaging to 8x8."""
  x = 1.0 - np.asarray(images, np.float64).mean(-1)
  n, s = x.shape[:2]
  k = s // 8
  return (
      x[:, : k * 8, : k * 8].reshape(n, 8, k, 8, k).mean((2, 4)).reshape(n, 64)
  )


class Classifier:
  """k nearest neighbours on 8x8 ink, trained on real digits that went
  through the same upscale-and-reduce path as the samples."""

  def __init__(self, image_size: int, k: int = 3, seed: int = 0):
    ink, labels = load_digits()
    feats = to_ink8(np.stack([to_pixels(x, image_size) for x in ink]) / 255.0)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    self.k = k
    self.x, self.y = feats[order[:cut]], labels[order[:cut]]
    test = order[cut:]
    self.heldout_acc = float(
        (self.predict_ink(feats[test]) == labels[test]).mean()
    )

  def predict_ink(self, feats: np.ndarray) -> np.ndarray:
    d = ((feats[:, None, :] - self.x[None]) ** 2).sum(-1)
    nearest = np.argsort(d, axis=1)[:, : self.k]
    votes = self.y[nearest]
    return np.array([np.bincount(v, minlength=10).argmax() for v in votes])

  def predict(self, images: np.ndarray) -> np.ndarray:
    return self.predict_ink(to_ink8(images))
