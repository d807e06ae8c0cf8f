"""The noise-path control: rectified flow from Gaussian noise to the image latent, with the
caption conditioning the same DiT.

  x0 ~ N(0, I),  x_t = (1 - (1 - sigma_min) t) x0 + t x1,  target v = x1 - (1 - sigma_min) x0

(the straight path of `flow.py` with noise in place of z_text). The caption enters the DiT
twice (`models/dit.py`, text_conditioning): its pooled token feature is added to the time
embedding that drives adaLN, and every block cross-attends to the token features. With
probability loss.cfg_null_prob a sample is trained as null (its caption dropped, its own image
kept as the target), so sampling can guide: v = v_null + s (v_cond - v_null).

Same data, time sampler, DiT and evaluator as CrossFlow's objective; it answers whether a gap
on the benchmark belongs to the noise-free formulation or to something both share. It has a
flow loss only: the KL, contrastive, TV and LPIPS terms belong to the text latent this path
does not have, and are logged as 0 so every run's logs read alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from txt2img_jax.objectives import flow
from txt2img_jax.objectives import losses
from txt2img_jax.utils import metric_names
from txt2img_jax.objectives import timesteps
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import noise_flow as noise_flow_lib
from txt2img_jax.objectives import crossflow

LOSS_TERMS = metric_names.LOSS_TERMS
EMA_KEYS = metric_names.EMA_KEYS


def build_model(config, latent_shape, vocab_size: int, embedded: bool):
  return noise_flow_lib.NoiseFlow.from_config(
      config, latent_shape, vocab_size, embedded
  )


def make_loss(config, model, autoencoder, text_frozen, perceptual=None):
  """loss(params, batch, rng, step, frozen, stats) -> (total, aux)."""
  c = config
  if perceptual is not None or c.loss.lpips_weight > 0:
    raise ValueError(
        "objective=noise_flow has no LPIPS term: set " "loss.lpips_weight=0"
    )
  sigma_min = c.flow.sigma_min
  edges = timesteps.t_bucket_edges(c.time.num_buckets)

  def loss(params, batch, rng, step, frozen, stats):
    k_lat, k_noise, k_null, k_t = jax.random.split(rng, 4)
    ids, mask = batch["ids"], batch["mask"]
    tokens = noise_flow_lib.caption_tokens(
        model,
        text_frozen,
        params,
        frozen.get("text"),
        ids,
        mask,
        tokens=batch.get("text_tokens"),
    )
    x1 = crossflow.image_latent(autoencoder, frozen, batch, k_lat, stats)
    x0 = jax.random.normal(k_noise, x1.shape, x1.dtype)

    b = ids.shape[0]
    # Caption dropout: a null sample keeps its own image as the target (the
    # unconditional model is the data's marginal, not another caption's).
    null = jax.random.bernoulli(k_null, c.loss.cfg_null_prob, (b,))
    indicator = 1 - null.astype(jnp.int32)

    t = timesteps.sample_t(k_t, b, c.time.sampler, step, c.time.start_prob)
    x_t = flow.interpolate(x0, x1, t, sigma_min)
    v_target = flow.velocity_target(x0, x1, sigma_min)
    v_pred = flow.velocity_from_output(
        model.apply(
            {"params": params},
            x_t,
            timesteps.time_input(t, c.flow.time_input),
            indicator,
            tokens,
            mask,
            method="velocity",
        ),
        x_t,
        t,
        sigma_min,
        c.flow.predict,
        c.flow.predict_min_gap,
    )
    flow_per_ex = losses.flow_mse_per_example(v_pred, v_target)
    loss_flow = flow_per_ex.mean()
    total = c.loss.flow_weight * loss_flow

    bucket_sum, bucket_count = timesteps.bucket_sums(flow_per_ex, t, edges)
    zero = jnp.float32(0.0)
    x_norm = jnp.sqrt(jnp.square(x1).reshape(b, -1).sum(1)).mean()
    aux = {
        "loss": total,
        "loss_flow": total,
        "flow_raw": loss_flow,
        "x1_norm": x_norm,
        "null_fraction": null.mean(),
        "flow_bucket_sum": bucket_sum,
        "flow_bucket_count": bucket_count,
    }
    for term in LOSS_TERMS:
      if term != "flow":
        aux[f"loss_{term}"] = zero
        aux[f"{term}_raw"] = zero
    return total, aux

  return loss


def make_generate(config, model, autoencoder, text_frozen):
  """generate(params, frozen, stats, ids, mask, rng, *, num_steps, method, cfg_scale,
  use_mean) -> images in [0, 1], the signature of every objective's `make_generate`.

  The ODE starts from a draw of N(0, I) (rng); use_mean has no meaning on this path (there is
  no text posterior) and is ignored. With cfg_scale != 1 each step evaluates the caption and
  the null condition in one batched call.
  """
  c = config

  def generate(
      params,
      frozen_params,
      stats,
      ids,
      mask,
      rng,
      *,
      num_steps,
      method,
      cfg_scale,
      use_mean,
  ):
    del use_mean
    tokens = noise_flow_lib.caption_tokens(
        model, text_frozen, params, frozen_params.get("text"), ids, mask
    )
    h, w, ch = model.latent_shape
    x0 = jax.random.normal(rng, (ids.shape[0], h, w, ch), jnp.float32)
    apply = functools.partial(model.apply, {"params": params})

    def velocity(x, t, indicator):
      # flow.cfg_velocity stacks [cond; null] along the batch: the captions
      # follow.
      reps = x.shape[0] // tokens.shape[0]
      tok = jnp.concatenate([tokens] * reps)
      msk = jnp.concatenate([mask] * reps)
      out = apply(
          x,
          timesteps.time_input(t, c.flow.time_input),
          indicator,
          tok,
          msk,
          method="velocity",
      )
      return flow.velocity_from_output(
          out,
          x,
          t,
          c.flow.sigma_min,
          c.flow.predict,
          c.flow.predict_min_gap,
      ).astype(jnp.float32)

    x1 = flow.integrate(velocity, x0, num_steps, method, cfg_scale)
    return ae_lib.decode_latent(
        autoencoder, frozen_params.get("latent", {}), x1, stats
    )

  return jax.jit(
      generate, static_argnames=("num_steps", "method", "cfg_scale", "use_mean")
  )
