"""Helpers of the evaluation: the relative pixel error and the caption grid."""

import numpy as np

from txt2img_jax.evaluation import structure
from txt2img_jax.data import shapes


def _renders(n=16):
  ex = [shapes.example(0, "test", i) for i in range(n)]
  return (
      np.stack([e["image"] for e in ex]).astype(np.float32) / 255,
      [e["caption"] for e in ex],
  )


def test_pixel_mse_rel_is_zero_for_exact_and_one_for_the_mean_image():
  refs, _ = _renders()
  assert structure.pixel_mse_rel(refs, refs) == 0.0
  mean = np.broadcast_to(refs.mean(0, keepdims=True), refs.shape)
  np.testing.assert_allclose(
      structure.pixel_mse_rel(mean, refs), 1.0, rtol=1e-5
  )
  black = np.zeros_like(refs)
  assert structure.pixel_mse_rel(black, refs) > 1.0


def test_caption_grid_has_a_tile_pair_per_caption():
  refs, captions = _renders(6)
  grid = structure.caption_grid(refs, refs, captions, scale=2, columns=3)
  s = 32 * 2
  assert grid.size[0] >= 3 * 2 * s and grid.size[1] >= 2 * s


def test_caption_grid_with_a_middle_panel_is_wider():
  refs, captions = _renders(6)
  two = structure.caption_grid(refs, refs, captions, scale=2, columns=3)
  three = structure.caption_grid(
      refs, refs, captions, scale=2, columns=3, between=1 - refs
  )
  assert three.size[0] >= two.size[0] + 3 * 32 * 2
  assert three.size[1] == two.size[1]


def test_z_text_measures_tell_an_image_like_z_text_from_a_code():
  # Imported here: the experiments package pulls in the trainer.
  import types
  from experiments import common
  from txt2img_jax.models import autoencoder as ae_lib

  refs, _ = _renders(32)
  ae = ae_lib.PixelAutoencoder(2)
  stats = ae_lib.LatentStats(shift=np.float32(0.1), scale=np.float32(0.5))
  run = types.SimpleNamespace(autoencoder=ae, stats=stats)
  x1 = np.asarray(ae_lib.standardize(ae.encode_moments({}, refs)[0], stats))
  rng = np.random.default_rng(0)
  image_like = common.z_text_measures(run, 3.0 * x1 + 1.0, refs)
  np.testing.assert_allclose(image_like["ztext/corr"], 1.0, rtol=1e-5)
  constant = common.z_text_measures(
      run, np.broadcast_to(x1[:1], x1.shape) + 0.0, refs
  )
  assert constant["ztext/caption_share"] < 1e-6
  # A caption-dependent 2x2 patch repeated over the latent: all repetition.
  patch = rng.normal(size=(32, 1, 2, 1, 2, x1.shape[-1]))
  tiled = np.broadcast_to(patch, (32, 8, 2, 8, 2, x1.shape[-1])).reshape(
      x1.shape
  )
  np.testing.assert_allclose(
      common.z_text_measures(run, tiled, refs)["ztext/tile_repeat"],
      1.0,
      rtol=1e-5,
  )
  code = common.z_text_measures(run, rng.normal(size=x1.shape), refs)
  assert code["ztext/tile_repeat"] < 0.1
  assert abs(code["ztext/corr"]) < 0.05
  # Noise is rougher than the renders (flat colour with a few edges).
  assert code["ztext/roughness"] > 2 * image_like["ztext/roughness"]
