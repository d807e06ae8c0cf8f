"""The noise-free cross-modal path and the ODE samplers that follow it.

t = 0 is the text latent z_text, t = 1 the image latent x1:
  x_t = (1 - (1 - sigma_min) t) z_text + t x1,   v = x1 - (1 - sigma_min) z_text.
The velocity is constant along a straight path, so the network only has to
learn where each text latent's image lies.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# The ODE methods of `integrate`: the one list the config check, the sample
# and evaluate commands and the evaluators use.
SAMPLERS = ("euler", "heun")


def _bcast(t: jax.Array, like: jax.Array) -> jax.Array:
  return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(
    z_text: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float
) -> jax.Array:
  t = _bcast(t, x1)
  return (1.0 - (1.0 - sigma_min) * t) * z_text + t * x1


def velocity_target(
    z_text: jax.Array, x1: jax.Array, sigma_min: float
) -> jax.Array:
  return x1 - (1.0 - sigma_min) * z_text


# What the flow network's output is (config.flow.predict): the velocity
# itself, or the image latent x1, from which the velocity follows.
PREDICTS = ("velocity", "image")


def velocity_from_output(
    out: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    sigma_min: float,
    predict: str = "velocity",
    min_gap: float = 0.05,
) -> jax.Array:
  """The velocity at (x_t, t) from the network's output.

  predict="image": `out` is the network's estimate of x1, and the velocity
  that carries x_t to it in the remaining time is
  (out - (1 - sigma_min) x_t) / (1 - (1 - sigma_min) t), its denominator
  kept >= min_gap so that t -> 1 stays finite. A clean image lies on a far
  smaller set than the noise mixed into x_t, so a network of limited width
  predicts it more easily than the velocity, which carries the noise too: in
  pixel-like latents with large tokens that is what keeps the samples smooth
  (the x-prediction of "Back to Basics: Let Denoising Generative Models
  Denoise", Li & He, 2025). The last Euler step lands on `out` itself.
  """
  if predict == "velocity":
    return out
  if predict != "image":
    raise ValueError(f"flow.predict={predict!r}: expected one of {PREDICTS}")
  gap = jnp.maximum(1.0 - (1.0 - sigma_min) * _bcast(t, x_t), min_gap)
  out = out.astype(jnp.float32)
  return (out - (1.0 - sigma_min) * x_t.astype(jnp.float32)) / gap


def one_step_estimate(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
  """x1 predicted from x_t by following v for the remaining (1 - t)."""
  return x_t + _bcast(1.0 - t, x_t) * v


def cfg_velocity(
    velocity_fn: Callable, x: jax.Array, t: jax.Array, scale: float
) -> jax.Array:
  """Classifier-free guidance: v_null + s (v_cond - v_null), one batched call.

  velocity_fn(x, t, indicator) with indicator 1 = conditional, 0 = null.
  scale 1 needs only the conditional branch.
  """
  b = x.shape[0]
  if scale == 1.0:
    return velocity_fn(x, t, jnp.ones((b,), jnp.int32))
  xx = jnp.concatenate([x, x])
  tt = jnp.concatenate([t, t])
  ind = jnp.concatenate([jnp.ones((b,), jnp.int32), jnp.zeros((b,), jnp.int32)])
  v = velocity_fn(xx, tt, ind)
  v_cond, v_null = v[:b], v[b:]
  return v_null + scale * (v_cond - v_null)


def integrate(
    velocity_fn: Callable,
    x0: jax.Array,
    num_steps: int,
    method: str = "euler",
    cfg_scale: float = 1.0,
) -> jax.Array:
  """Integrates dx/dt = v from t = 0 to 1 with uniform steps.

  velocity_fn(x, t (B,), indicator (B,)) -> v. Heun (the trapezoid rule on
  an Euler predictor) costs two velocity evaluations per step.
  """
  if method not in SAMPLERS:
    raise ValueError(f"unknown sampler {method!r}; expected one of {SAMPLERS}")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  b = x0.shape[0]
  dt = 1.0 / num_steps

  def v_at(x, t_scalar):
    t = jnp.full((b,), t_scalar, x.dtype)
    return cfg_velocity(velocity_fn, x, t, cfg_scale)

  def body(i, x):
    t = i * dt
    v = v_at(x, t)
    x_euler = x + dt * v
    if method == "euler":
      return x_euler
    v_next = v_at(x_euler, t + dt)
    return x + 0.5 * dt * (v + v_next)

  return jax.lax.fori_loop(0, num_steps, body, x0)
