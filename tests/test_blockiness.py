"""The mosaic measure, calibrated on real images: scikit-learn's handwritten
digits at the folder recipe's 64 px and its 8-pixel tokens, and the shapes
renders at their 4-pixel tokens."""

import numpy as np
import pytest

from txt2img_jax.evaluation import blockiness
from txt2img_jax.data import shapes
from experiments import digits_data


@pytest.fixture(scope="module")
def digit_images():
  ink, _ = digits_data.load_digits()
  order = np.random.default_rng(0).permutation(len(ink))[:600]
  from PIL import Image

  up = [
      np.asarray(
          Image.fromarray(digits_data.to_pixels(x, 32)).resize(
              (64, 64), Image.Resampling.BICUBIC
          )
      )
      for x in ink[order]
  ]
  return np.stack(up).astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def shape_images():
  rng = np.random.default_rng(0)
  return (
      np.stack(
          [
              shapes.render(shapes.random_objects(rng, None), 32)
              for _ in range(400)
          ]
      ).astype(np.float64)
      / 255.0
  )


@pytest.mark.parametrize("which,period", [("digits", 8), ("shapes", 4)])
def test_calibration(which, period, digit_images, shape_images):
  images = digit_images if which == "digits" else shape_images
  half = len(images) // 2
  ref = blockiness.Reference.of(images[:half], period)
  rng = np.random.default_rng(1)
  others = images[half:]

  real = ref.score(others)
  assert 0.9 < real["blockiness"] < 1.1, real
  assert 0.8 < real["hf"] < 1.2, real
  assert not blockiness.is_mosaic(real["blockiness"])

  # The seed's colour blocks: token tiles with shuffled brightness.
  tiled = ref.score(blockiness.tiled(others, period, rng))
  assert tiled["blockiness"] > 3.0, tiled
  assert tiled["hf"] > 1.5, tiled
  assert blockiness.is_mosaic(tiled["blockiness"])

  # Blurred: soft but no grid, so not a mosaic, and low on high frequencies.
  blurred = ref.score(blockiness.blurred(others, radius=3))
  assert not blockiness.is_mosaic(blurred["blockiness"]), blurred
  assert blurred["hf"] < 0.7, blurred

  # Pixel noise is high-frequency energy, not a grid.
  noisy = ref.score(np.clip(others + rng.normal(0, 0.1, others.shape), 0, 1))
  assert noisy["hf"] > 1.5, noisy
  assert not blockiness.is_mosaic(noisy["blockiness"])


def test_a_grid_of_another_period_is_not_this_models_mosaic(digit_images):
  # Tiles of 5 pixels do not line up with 8-pixel tokens: much weaker.
  ref = blockiness.Reference.of(digit_images[:300], 8)
  rng = np.random.default_rng(2)
  own = ref.score(blockiness.tiled(digit_images[300:], 8, rng))["blockiness"]
  other = ref.score(blockiness.tiled(digit_images[300:], 5, rng))["blockiness"]
  assert other < own / 3


def test_boundary_energies_by_hand():
  # One step edge at column 4 of an 8-wide image: with period 4 it lies on
  # the grid, with period 3 inside a cell.
  x = np.zeros((1, 8, 8))
  x[:, :, 4:] = 1.0
  across, inside = blockiness.boundary_energies(x, 4)
  assert across[0] > 0 and inside[0] == 0
  across, inside = blockiness.boundary_energies(x, 3)
  assert across[0] == 0 and inside[0] > 0


def test_token_period_and_fit():
  assert blockiness.token_period(64, 16, 2) == 8  # folder.py: s2d 4, patch 2.
  assert blockiness.token_period(32, 16, 2) == 4  # shapes: s2d 2, patch 2.
  assert blockiness.token_period(256, 32, 2) == 16  # KL-VAE /8, patch 2.
  assert blockiness.fits(8, 64) and not blockiness.fits(1, 64)
  assert not blockiness.fits(16, 16)
  with pytest.raises(ValueError, match="token period"):
    blockiness.boundary_energies(np.zeros((1, 8, 8)), 8)
