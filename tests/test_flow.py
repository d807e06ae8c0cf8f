"""The path, its velocity, and the samplers against closed-form solutions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from txt2img_jax.objectives import flow

SIGMA = 0.1


def _pair(b=3, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (
      jax.random.normal(k1, (b, 4, 4, 2)),
      jax.random.normal(k2, (b, 4, 4, 2)),
  )


def test_path_starts_at_the_text_and_ends_at_the_image():
  z, x1 = _pair()
  b = z.shape[0]
  np.testing.assert_allclose(
      flow.interpolate(z, x1, jnp.zeros((b,)), SIGMA), z, rtol=1e-6
  )
  np.testing.assert_allclose(
      flow.interpolate(z, x1, jnp.ones((b,)), SIGMA),
      x1 + SIGMA * z,
      rtol=1e-5,
      atol=1e-6,
  )
  # sigma_min 0 lands on the image itself.
  np.testing.assert_allclose(
      flow.interpolate(z, x1, jnp.ones((b,)), 0.0), x1, rtol=1e-6
  )


def test_each_example_uses_its_own_t():
  z, x1 = _pair()
  t = jnp.array([0.0, 0.5, 1.0])
  got = flow.interpolate(z, x1, t, SIGMA)
  for i in range(3):
    ti = float(t[i])
    want = (1 - (1 - SIGMA) * ti) * z[i] + ti * x1[i]
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_velocity_is_the_paths_time_derivative():
  z, x1 = _pair()
  b = z.shape[0]
  v = flow.velocity_target(z, x1, SIGMA)
  np.testing.assert_allclose(v, x1 - (1 - SIGMA) * z, rtol=1e-6)
  # The path is straight, so any difference quotient is the velocity.
  for t0, t1 in ((0.0, 1.0), (0.2, 0.7), (0.9, 0.95)):
    x_a = flow.interpolate(z, x1, jnp.full((b,), t0), SIGMA)
    x_b = flow.interpolate(z, x1, jnp.full((b,), t1), SIGMA)
    np.testing.assert_allclose((x_b - x_a) / (t1 - t0), v, rtol=1e-3, atol=1e-4)


def test_image_prediction_gives_the_velocity_to_the_predicted_image():
  z, x1 = _pair()
  t = jnp.array([0.0, 0.3, 0.8])
  x_t = flow.interpolate(z, x1, t, SIGMA)
  # The true image gives the true velocity (t below the clipped end).
  v = flow.velocity_from_output(x1, x_t, t, SIGMA, "image", min_gap=0.05)
  np.testing.assert_allclose(
      v, flow.velocity_target(z, x1, SIGMA), rtol=1e-4, atol=1e-4
  )
  # Following it for the remaining time lands on the predicted image.
  guess = x1 + 0.5
  v = flow.velocity_from_output(guess, x_t, t, 0.0, "image", min_gap=0.05)
  np.testing.assert_allclose(
      flow.one_step_estimate(x_t, v, t), guess, rtol=1e-4, atol=1e-4
  )
  # Near t = 1 the gap is clipped: finite, and the velocity output unchanged.
  t_end = jnp.array([1.0, 1.0, 1.0])
  v = flow.velocity_from_output(guess, x1, t_end, 0.0, "image", min_gap=0.05)
  assert np.isfinite(np.asarray(v)).all()
  np.testing.assert_allclose(v, (guess - x1) / 0.05, rtol=1e-5)
  assert flow.velocity_from_output(v, x_t, t, SIGMA, "velocity") is v
  with pytest.raises(ValueError, match="flow.predict='x0'"):
    flow.velocity_from_output(v, x_t, t, SIGMA, "x0")


def test_one_step_estimate_with_the_true_velocity_lands_on_the_end():
  z, x1 = _pair()
  v = flow.velocity_target(z, x1, SIGMA)
  t = jnp.array([0.0, 0.3, 0.8])
  x_t = flow.interpolate(z, x1, t, SIGMA)
  np.testing.assert_allclose(
      flow.one_step_estimate(x_t, v, t), x1 + SIGMA * z, rtol=1e-5, atol=1e-5
  )
  # A wrong velocity is off by (1 - t) times its error.
  x_hat = flow.one_step_estimate(x_t, v + 1.0, t)
  np.testing.assert_allclose(
      (x_hat - x1 - SIGMA * z)[:, 0, 0, 0], 1.0 - t, rtol=1e-5
  )


A, B = 1.5, 2.0  # dx/dt = A x + B t


def _linear_field(x, t, indicator):
  del indicator
  return A * x + B * t.reshape(-1, 1, 1, 1)


def _exact_linear(x0):
  # x(1) = e^A x0 + B int_0^1 s e^{A (1 - s)} ds.
  return math.exp(A) * x0 + B * (math.exp(A) - 1 - A) / A**2


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_integrators_converge_at_their_order(method, order):
  x0, _ = _pair()
  want = _exact_linear(x0)
  errors = []
  for n in (8, 16, 32):
    got = flow.integrate(_linear_field, x0, n, method=method)
    errors.append(float(jnp.max(jnp.abs(got - want))))
  for coarse, fine in zip(errors, errors[1:]):
    # Halving the step divides the error by 2^order (so it goes to 0: the
    # limit is the exact solution, not some other value).
    assert coarse / fine == pytest.approx(2**order, rel=0.15), errors


def test_integrators_on_a_field_of_t_alone():
  # dx/dt = B t from 0: x(1) = B / 2. Heun's trapezoid is exact on it, Euler's
  # left sums give B (1 - h) / 2.
  x0 = jnp.zeros((2, 2, 2, 1))
  field = lambda x, t, ind: jnp.zeros_like(x) + B * t.reshape(-1, 1, 1, 1)
  for n in (1, 4, 10):
    np.testing.assert_allclose(
        flow.integrate(field, x0, n, "heun"), B / 2, rtol=1e-6
    )
    np.testing.assert_allclose(
        flow.integrate(field, x0, n, "euler"),
        B * (1 - 1 / n) / 2,
        rtol=1e-6,
        atol=1e-7,
    )


C_COND, C_NULL = 1.0, -0.5


def _guided_field(x, t, indicator):
  del t
  c = jnp.where(indicator == 1, C_COND, C_NULL).reshape(-1, 1, 1, 1)
  return -x + c


def test_cfg_combines_the_two_branches():
  x0, _ = _pair()
  t = jnp.full((x0.shape[0],), 0.3)
  for s in (0.0, 3.0, 7.0):
    got = flow.cfg_velocity(_guided_field, x0, t, s)
    np.testing.assert_allclose(
        got, -x0 + C_NULL + s * (C_COND - C_NULL), rtol=1e-6, atol=1e-6
    )


def test_cfg_scale_one_runs_only_the_conditional_branch():
  calls = []

  def field(x, t, indicator):
    calls.append(np.asarray(indicator))
    return _guided_field(x, t, indicator)

  x0, _ = _pair()
  got = flow.cfg_velocity(field, x0, jnp.zeros((x0.shape[0],)), 1.0)
  np.testing.assert_allclose(got, -x0 + C_COND, rtol=1e-6)
  assert len(calls) == 1 and (calls[0] == 1).all()


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_guided_integration_follows_the_guided_field(method):
  # dx/dt = -x + k with k = c_null + s (c_cond - c_null). Each step maps
  # x - k to g (x - k), g = 1 - h for Euler and 1 - h + h^2 / 2 for Heun.
  x0, _ = _pair()
  s, n = 4.0, 16
  h = 1 / n
  k = C_NULL + s * (C_COND - C_NULL)
  g = 1 - h if method == "euler" else 1 - h + h * h / 2
  got = flow.integrate(_guided_field, x0, n, method=method, cfg_scale=s)
  np.testing.assert_allclose(got, k + g**n * (x0 - k), rtol=1e-5, atol=1e-5)
  # Against the ODE's own solution k + e^-1 (x0 - k): n log g = -1 - h / 2
  # + O(h^2) for Euler and -1 + h^2 / 6 + O(h^3) for Heun.
  exact = k + math.exp(-1) * (x0 - k)
  lead = -h / 2 if method == "euler" else h * h / 6
  np.testing.assert_allclose(
      (got - exact) / (x0 - k), math.exp(-1) * lead, rtol=0.1
  )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_steps=4, method="rk4"), "unknown sampler 'rk4'"),
        (dict(num_steps=0), "num_steps must be >= 1"),
    ],
)
def test_bad_sampler_arguments_are_clear_errors(kwargs, message):
  x0, _ = _pair()
  with pytest.raises(ValueError, match=message):
    flow.integrate(_linear_field, x0, **kwargs)
