"""Each loss term against a case worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from txt2img_jax.objectives import losses

# Two examples of a 2-dim posterior; the hand sums below are per example.
MU = jnp.array([[1.0, 0.0], [2.0, -1.0]])
LOG_VAR = jnp.array([[0.0, math.log(2.0)], [math.log(0.5), 0.0]])


def test_gaussian_kl_matches_the_hand_sum():
  # 0.5 (mu^2 + var - 1 - log var) per dim.
  want = [
      0.5 * (1 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2)),
      0.5 * (4 + 0.5 - 1 - math.log(0.5)) + 0.5 * (1 + 1 - 1 - 0),
  ]
  np.testing.assert_allclose(
      losses.kl_term(MU, LOG_VAR, "gaussian"), want, rtol=1e-6
  )
  np.testing.assert_allclose(
      losses.kl_to_standard_normal(MU, LOG_VAR), want, rtol=1e-6
  )


def test_crossflow_kl_matches_the_hand_sum():
  # 0.5 ((0.3 mu)^6 + var - 1 - log var) per dim: 0.3^6 = 0.000729,
  # 0.6^6 = 0.046656.
  want = [
      0.5 * (0.000729 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2)),
      0.5 * (0.046656 + 0.5 - 1 - math.log(0.5)) + 0.5 * (0.000729 + 1 - 1 - 0),
  ]
  np.testing.assert_allclose(
      losses.kl_term(MU, LOG_VAR, "crossflow"), want, rtol=1e-6
  )


def test_kl_kinds_agree_on_variance_and_differ_on_means():
  zero = jnp.zeros((1, 3))
  lv = jnp.array([[0.3, -0.7, 1.2]])
  np.testing.assert_allclose(
      losses.kl_term(zero, lv, "gaussian"),
      losses.kl_term(zero, lv, "crossflow"),
      rtol=1e-6,
  )
  # At the prior's variance only the mean term is left: mu^2/2 vs (0.3mu)^6/2.
  mu = jnp.array([[5.0]])
  np.testing.assert_allclose(
      losses.kl_term(mu, jnp.zeros((1, 1)), "gaussian"), [12.5], rtol=1e-6
  )
  np.testing.assert_allclose(
      losses.kl_term(mu, jnp.zeros((1, 1)), "crossflow"),
      [0.5 * 1.5**6],
      rtol=1e-6,
  )


def test_kl_sums_over_every_latent_dim():
  mu = jnp.ones((2, 4, 4, 3))
  got = losses.kl_term(mu, jnp.zeros_like(mu), "gaussian")
  np.testing.assert_allclose(got, [0.5 * 48, 0.5 * 48], rtol=1e-6)


def test_unknown_kl_kind_is_a_clear_error():
  with pytest.raises(ValueError, match="kl_kind='normal'"):
    losses.kl_term(MU, LOG_VAR, "normal")


def _one_hot_pairs(b, dim=5):
  """Text and image vectors that match pairwise and are orthogonal otherwise."""
  return jnp.eye(b, dim), 3.0 * jnp.eye(b, dim)  # the norm must not matter


@pytest.mark.parametrize("b", [2, 4])
def test_infonce_on_orthogonal_pairs(b):
  text, image = _one_hot_pairs(b)
  # logits = scale I: each row's loss is log(1 + (b - 1) e^-scale).
  got = losses.contrastive(text, image, jnp.float32(math.log(2.0)))
  np.testing.assert_allclose(
      got, math.log(1 + (b - 1) * math.exp(-2.0)), rtol=1e-5
  )
  got_raw = losses.contrastive(text, image, jnp.float32(1.5), kind="raw")
  np.testing.assert_allclose(
      got_raw, math.log(1 + (b - 1) * math.exp(-1.5)), rtol=1e-5
  )


def test_infonce_exp_scale_is_capped_and_raw_is_not():
  text, image = _one_hot_pairs(2)
  # Pairs at cos -1, 0 across: with scale c each row's loss is log(1 + e^c).
  capped = losses.contrastive(text, -image, jnp.float32(math.log(1e3)))
  np.testing.assert_allclose(capped, math.log(1 + math.exp(100.0)), rtol=1e-5)
  raw = losses.contrastive(text, -image, jnp.float32(math.log(1e3)), kind="raw")
  np.testing.assert_allclose(
      raw, math.log(1 + math.exp(math.log(1e3))), rtol=1e-5
  )


def test_infonce_is_symmetric_in_its_two_towers():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  text = jax.random.normal(k1, (6, 2, 2, 3))
  image = jax.random.normal(k2, (6, 12))
  for kind, s in (("exp", 2.0), ("raw", 7.0)):
    a = losses.contrastive(text, image, jnp.float32(s), kind=kind)
    b = losses.contrastive(image, text, jnp.float32(s), kind=kind)
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # And it is not a constant: matching pairs score lower than a shuffle.
  matched = losses.contrastive(image, image, jnp.float32(2.0))
  shuffled = losses.contrastive(image, jnp.roll(image, 1, 0), jnp.float32(2.0))
  assert float(matched) < float(shuffled)


def test_unknown_logit_scale_kind_is_a_clear_error():
  text, image = _one_hot_pairs(2)
  with pytest.raises(ValueError, match="logit_scale_kind='log'"):
    losses.contrastive(text, image, jnp.float32(1.0), kind="log")


def _swap(null, seed=0):
  null = jnp.array(null, bool)
  x1 = jnp.arange(null.shape[0], dtype=jnp.float32)[:, None] * jnp.ones((1, 3))
  new_null, target = losses.swap_null_targets(
      jax.random.PRNGKey(seed), null, x1
  )
  return np.asarray(new_null), np.asarray(target[:, 0]).astype(int)


def test_no_null_keeps_every_image():
  null, src = _swap([0, 0, 0, 0])
  assert not null.any()
  np.testing.assert_array_equal(src, [0, 1, 2, 3])


def test_lone_null_goes_back_to_conditional_on_its_own_image():
  for where in range(4):
    flags = [0, 0, 0, 0]
    flags[where] = 1
    null, src = _swap(flags, seed=where)
    assert not null.any(), flags
    np.testing.assert_array_equal(src, [0, 1, 2, 3])


def test_two_nulls_trade_images():
  null, src = _swap([0, 1, 0, 1])
  np.testing.assert_array_equal(null, [0, 1, 0, 1])
  np.testing.assert_array_equal(src, [0, 3, 2, 1])


@pytest.mark.parametrize(
    "flags", [[1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1]]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_nulls_take_another_nulls_image(flags, seed):
  null, src = _swap(flags, seed)
  idx = np.arange(len(flags))
  flags = np.array(flags, bool)
  np.testing.assert_array_equal(null, flags)
  np.testing.assert_array_equal(src[~flags], idx[~flags])
  # A permutation of the null images with no null keeping its own.
  assert sorted(src[flags]) == sorted(idx[flags])
  assert (src[flags] != idx[flags]).all()


def test_null_swap_depends_on_the_key():
  perms = {tuple(_swap([1, 1, 1, 1, 1, 1], seed)[1]) for seed in range(8)}
  assert len(perms) > 1


def test_total_variation_by_hand():
  z = jnp.array([[[0.0, 1.0], [3.0, 5.0]]])[..., None]  # (1, 2, 2, 1)
  # Down: |3 - 0| + |5 - 1| = 7; across: |1 - 0| + |5 - 3| = 3.
  np.testing.assert_allclose(losses.total_variation(z), [10.0])
  flat = jnp.full((2, 3, 3, 2), 4.0)
  np.testing.assert_allclose(losses.total_variation(flat), [0.0, 0.0])


def test_kl_weight_warms_up_linearly():
  w = lambda step, warm: float(losses.kl_weight(jnp.int32(step), 0.2, warm))
  assert w(0, 10) == 0.0
  assert w(5, 10) == pytest.approx(0.1)
  assert w(10, 10) == pytest.approx(0.2)
  assert w(50, 10) == pytest.approx(0.2)
  assert w(0, 0) == pytest.approx(0.2)


def test_window_weight_edges():
  w = lambda step, start, stop: float(
      losses.window_weight(jnp.int32(step), 0.5, start, stop)
  )
  assert [w(s, 2, 5) for s in (0, 1, 2, 4, 5, 9)] == [0, 0, 0.5, 0.5, 0, 0]
  assert [w(s, 2, 0) for s in (1, 2, 10_000)] == [0, 0.5, 0.5]
