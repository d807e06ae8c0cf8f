"""The sampler of a run: z_text from the text head (its mean, or a draw),
the ODE to the image latent, the decoder; an objective with its own sampler
(noise_flow) provides it instead."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from txt2img_jax import objectives
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import generator as generator_lib
from txt2img_jax.objectives import flow
from txt2img_jax.objectives import timesteps


def make_generate_fn(config, model, autoencoder, text_frozen):
  """generate(params, frozen, stats, ids, mask, rng, cfg_scale) -> images [0,1].

  `frozen` is {"text": a frozen text encoder's weights, "latent": the latent
  space's}, either may be empty. z_text comes from the head (its mean, or a draw), then the ODE carries it
  to the image latent; the latent is un-standardised and decoded.
  """
  objective = objectives.get(config.get("objective", "crossflow"))
  if hasattr(objective, "make_generate"):  # Its own sampler (noise_flow).
    return objective.make_generate(config, model, autoencoder, text_frozen)
  c = config

  def generate(params, frozen_params, stats, ids, mask, rng, *,
               num_steps, method, cfg_scale, use_mean):
    apply = functools.partial(model.apply, {"params": params})
    mu, log_var = generator_lib.text_posterior(
        model, text_frozen, params, frozen_params.get("text"), ids, mask)
    z = mu if use_mean else mu + jnp.exp(0.5 * log_var) * jax.random.normal(
        rng, mu.shape, mu.dtype)

    def velocity(x, t, indicator):
      return apply(x, timesteps.time_input(t, c.flow.time_input), indicator,
                   method="velocity").astype(jnp.float32)

    x1 = flow.integrate(velocity, z.astype(jnp.float32), num_steps, method,
                        cfg_scale)
    return ae_lib.decode_latent(autoencoder, frozen_params.get("latent", {}),
                                x1, stats)

  return jax.jit(generate, static_argnames=("num_steps", "method",
                                            "cfg_scale", "use_mean"))
