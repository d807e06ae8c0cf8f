"""Helpers of the evaluation: the relative pixel error and the caption grid."""

import numpy as np

from txt2img_jax import evaluate
from txt2img_jax.data import shapes


def _renders(n=16):
  ex = [shapes.example(0, "test", i) for i in range(n)]
  return (np.stack([e["image"] for e in ex]).astype(np.float32) / 255,
          [e["caption"] for e in ex])


def test_pixel_mse_rel_is_zero_for_exact_and_one_for_the_mean_image():
  refs, _ = _renders()
  assert evaluate.pixel_mse_rel(refs, refs) == 0.0
  mean = np.broadcast_to(refs.mean(0, keepdims=True), refs.shape)
  np.testing.assert_allclose(evaluate.pixel_mse_rel(mean, refs), 1.0,
                             rtol=1e-5)
  black = np.zeros_like(refs)
  assert evaluate.pixel_mse_rel(black, refs) > 1.0


def test_caption_grid_has_a_tile_pair_per_caption():
  refs, captions = _renders(6)
  grid = evaluate.caption_grid(refs, refs, captions, scale=2, columns=3)
  s = 32 * 2
  assert grid.size[0] >= 3 * 2 * s and grid.size[1] >= 2 * s
