"""Time samplers against their distributions; time inputs; buckets."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from txt2img_jax.objectives import timesteps

N = 20_000
KS_MAX = 0.02


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


@functools.lru_cache
def _jitted(cfg_json, n):
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))
  return jax.jit(functools.partial(timesteps.sample_t, batch_size=n, cfg=cfg))


def _draw(cfg, step=0, n=N, seed=0):
  # `step` is a traced argument, as in the train step: one compilation for all steps.
  fn = _jitted(json.dumps(cfg.to_dict(), sort_keys=True), n)
  t = np.asarray(fn(jax.random.key(seed), step=jnp.asarray(step, jnp.int32)))
  assert t.shape == (n,) and t.dtype == np.float32
  assert np.all((t > 0) & (t < 1))
  return t.astype(np.float64)


def _logit(t):
  return np.log(t) - np.log1p(-t)


def test_uniform_default_and_range():
  assert stats.kstest(_draw(_cfg(kind="uniform")), "uniform").statistic < KS_MAX
  t = _draw(_cfg(kind="uniform", t_min=0.2, t_max=0.7))
  assert stats.kstest(t, stats.uniform(0.2, 0.5).cdf).statistic < KS_MAX


def test_logit_normal():
  t = _draw(_cfg(kind="logit_normal", mean=0.5, std=1.5))
  assert stats.kstest(_logit(t), stats.norm(0.5, 1.5).cdf).statistic < KS_MAX


def test_uniform_logsnr():
  t = _draw(_cfg(kind="uniform_logsnr", logsnr_min=-2.0, logsnr_max=6.0))
  lam = 2 * _logit(t)
  assert stats.kstest(lam, stats.uniform(-2.0, 8.0).cdf).statistic < KS_MAX
  assert lam.min() >= -2.0 - 1e-4 and lam.max() <= 6.0 + 1e-4


def test_alpha_range():
  t = _draw(_cfg(kind="alpha_range", alpha_min=0.6, alpha_max=0.98))
  assert stats.kstest(t, stats.uniform(0.6, 0.38).cdf).statistic < KS_MAX


CURRICULUM = dict(
    kind="curriculum",
    steps=1000,
    blend_steps=400,
    first=dict(kind="alpha_range", alpha_min=0.8, alpha_max=0.98),
    then=dict(
        kind="uniform", t_min=0.0, t_max=0.5
    ),  # disjoint from `first`: each draw is attributable
)


def test_curriculum_phases():
  cfg = _cfg(**CURRICULUM)
  for step in (0, 500, 999):
    t = _draw(cfg, step)
    assert np.all(t >= 0.8 - 1e-6)
    assert stats.kstest(t, stats.uniform(0.8, 0.18).cdf).statistic < KS_MAX
  for step in (1400, 5000):
    t = _draw(cfg, step)
    assert np.all(t <= 0.5 + 1e-6)
    assert stats.kstest(t, stats.uniform(0.0, 0.5).cdf).statistic < KS_MAX
  for step, frac in ((1100, 0.25), (1200, 0.5), (1300, 0.75)):
    t = _draw(cfg, step)
    share_then = np.mean(t <= 0.5)
    assert abs(share_then - frac) < 4 * np.sqrt(frac * (1 - frac) / N)


def test_curriculum_without_blend_switches_at_steps():
  cfg = _cfg(**{**CURRICULUM, "blend_steps": 0})
  assert np.all(_draw(cfg, 999) >= 0.8 - 1e-6)
  assert np.all(_draw(cfg, 1000) <= 0.5 + 1e-6)


def test_the_notes_curriculum_validates():
  timesteps.validate_time_config(
      _cfg(
          kind="curriculum",
          steps=30_000,
          blend_steps=0,
          first=dict(kind="alpha_range", alpha_min=0.8, alpha_max=0.98),
          then=dict(kind="uniform_logsnr", logsnr_min=-2.0, logsnr_max=6.0),
      )
  )


@pytest.mark.parametrize(
    "cfg",
    [
        dict(kind="beta"),
        dict(kind="uniform", t_min=0.5, t_max=0.5),
        dict(kind="uniform", t_min=-0.1, t_max=0.5),
        dict(kind="alpha_range", alpha_min=0.98, alpha_max=0.6),
        dict(kind="uniform_logsnr", logsnr_min=6.0, logsnr_max=-2.0),
        dict(kind="logit_normal", std=0.0),
        dict(kind="uniform", tmin=0.1),  # typo
        dict(
            kind="curriculum",
            first=dict(kind="uniform"),
            then=dict(kind="uniform"),
        ),  # no steps
        dict(
            kind="curriculum",
            steps=10,
            blend_steps=-1,
            first=dict(kind="uniform"),
            then=dict(kind="uniform"),
        ),
        dict(
            kind="curriculum",
            steps=10,
            first=dict(kind="uniform"),
            then=dict(
                kind="curriculum",
                steps=5,
                first=dict(kind="uniform"),
                then=dict(kind="uniform"),
            ),
        ),
    ],
)
def test_validation(cfg):
  with pytest.raises(ValueError):
    timesteps.validate_time_config(_cfg(**cfg))


def test_time_input():
  t = jnp.asarray([1e-12, 0.1, 0.5, 0.9, 1 - 1e-7], jnp.float32)
  np.testing.assert_allclose(timesteps.time_input(t, "t"), t)
  np.testing.assert_allclose(
      timesteps.time_input(t, "linear_logsnr"), 4 - 8 * np.asarray(t), rtol=1e-6
  )
  lam = np.asarray(timesteps.time_input(t, "logsnr"))
  np.testing.assert_allclose(
      lam[1:4], [2 * np.log(1 / 9), 0.0, 2 * np.log(9)], rtol=1e-5, atol=1e-6
  )
  assert lam[0] == -timesteps.LOGSNR_CLIP and lam[-1] == timesteps.LOGSNR_CLIP
  # t = sigmoid(lambda / 2) inverts it.
  np.testing.assert_allclose(jax.nn.sigmoid(lam[1:4] / 2), t[1:4], rtol=1e-5)
  with pytest.raises(ValueError):
    timesteps.time_input(t, "sigma")


def test_buckets():
  edges = timesteps.t_bucket_edges(4)
  np.testing.assert_allclose(edges, [0, 0.25, 0.5, 0.75, 1.0])
  t = jnp.asarray([0.0, 0.1, 0.25, 0.49, 0.5, 0.99, 1.0])
  np.testing.assert_array_equal(
      timesteps.bucket_index(t, edges), [0, 0, 1, 1, 2, 3, 3]
  )
  sums, counts = jax.jit(timesteps.bucket_sums)(jnp.arange(7.0), t, edges)
  np.testing.assert_allclose(sums, [0 + 1, 2 + 3, 4, 5 + 6])
  np.testing.assert_allclose(counts, [2, 2, 1, 2])
  with pytest.raises(ValueError):
    timesteps.t_bucket_edges(0)


def test_start_prob_puts_that_share_at_the_start_and_keeps_the_rest():
  cfg = _cfg(kind="uniform", t_min=0.2, t_max=0.7)
  key = jax.random.key(3)
  base = np.asarray(timesteps.sample_t(key, N, cfg))
  # 0 is the sampler alone, draw for draw.
  np.testing.assert_array_equal(
      np.asarray(timesteps.sample_t(key, N, cfg, start_prob=0.0)), base
  )
  t = np.asarray(timesteps.sample_t(key, N, cfg, start_prob=0.3))
  at_start = t == np.float32(timesteps.T_EPS)
  assert abs(at_start.mean() - 0.3) < 0.015
  # The others are the sampler's own draws, unchanged.
  np.testing.assert_array_equal(t[~at_start], base[~at_start])
  for bad in (-0.1, 1.0, "0.5"):
    with pytest.raises(ValueError, match="start_prob"):
      timesteps.validate_start_prob(bad)
