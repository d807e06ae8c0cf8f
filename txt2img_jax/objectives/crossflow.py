"""CrossFlow's noise-free objective: the text latent flows to the image latent.

  x_t = (1 - (1 - sigma_min) t) z_text + t x1,  target v = x1 - (1 - sigma_min) z_text

with z_text drawn from the text head's posterior, plus the KL of that
posterior, the contrastive loss between z_text and the image, TV of z_text,
the squared distance of its mean to the image latent (align), and LPIPS on
the decoded one-step estimate (each weighted by the config; see
configs/base.py). A batch may carry the frozen features cached by `prepare`
(`moments_mean`/`moments_logvar` for the image, `text_tokens` for the
caption); then the frozen networks do not run.
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
from txt2img_jax.models import generator as generator_lib

LOSS_TERMS = metric_names.LOSS_TERMS
EMA_KEYS = metric_names.EMA_KEYS


def image_latent(autoencoder, frozen, batch, rng, stats):
  """x1, standardised: from cached moments when the batch has them, else by
  encoding the images (the one encode path of `models/autoencoder.py`)."""
  if "moments_mean" in batch:
    moments = (batch["moments_mean"], batch["moments_logvar"])
    return ae_lib.sample_latent(autoencoder, moments, rng, stats)
  return ae_lib.encode_latent(
      autoencoder, frozen.get("latent", {}), batch["image"], rng, stats
  )


def build_model(config, latent_shape, vocab_size: int, embedded: bool):
  return generator_lib.CrossFlow.from_config(
      config, latent_shape, vocab_size, embedded
  )


def make_loss(config, model, autoencoder, text_frozen, perceptual=None):
  """loss(params, batch, rng, step, frozen, stats) -> (total, aux).

  `frozen` holds the weights that do not train: {"text": a pretrained text
  encoder's, "latent": the latent space's, "lpips": the perceptual net's};
  any may be absent.
  """
  c = config
  sigma_min = c.flow.sigma_min
  edges = timesteps.t_bucket_edges(c.time.num_buckets)

  def loss(params, batch, rng, step, frozen, stats):
    k_lat, k_eps, k_null, k_swap, k_t = jax.random.split(rng, 5)
    ids, mask = batch["ids"], batch["mask"]
    apply = functools.partial(model.apply, {"params": params})

    mu, log_var = generator_lib.text_posterior(
        model,
        text_frozen,
        params,
        frozen.get("text"),
        ids,
        mask,
        tokens=batch.get("text_tokens"),
    )
    mu = mu.astype(jnp.float32)
    log_var = log_var.astype(jnp.float32)
    z_text = mu + jnp.exp(0.5 * log_var) * jax.random.normal(k_eps, mu.shape)

    x1 = image_latent(autoencoder, frozen, batch, k_lat, stats)

    b = ids.shape[0]
    null = jax.random.bernoulli(k_null, c.loss.cfg_null_prob, (b,))
    null, x1_target = losses.swap_null_targets(k_swap, null, x1)
    indicator = 1 - null.astype(jnp.int32)

    t = timesteps.sample_t(k_t, b, c.time.sampler, step, c.time.start_prob)
    x_t = flow.interpolate(z_text, x1_target, t, sigma_min)
    v_target = flow.velocity_target(z_text, x1_target, sigma_min)
    v_pred = flow.velocity_from_output(
        apply(
            x_t,
            timesteps.time_input(t, c.flow.time_input),
            indicator,
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

    kl_raw = losses.kl_term(mu, log_var, c.loss.kl_kind).mean()
    kl_w = losses.kl_weight(step, c.loss.kl_weight, c.loss.kl_warmup_steps)
    img_emb, logit_scale = apply(x1, method="embed_image")
    if c.loss.clip_target == "latent":
      img_emb = jax.lax.stop_gradient(x1)  # The tower keeps its scale only.
    negatives = negatives_valid = None
    if "neg_ids" in batch:
      # Hard negatives (loss.hard_negatives): the text latents of captions
      # that say something else, drawn like z_text. A caption with nothing
      # to change came back as itself and is left out.
      neg_mu, neg_lv = generator_lib.text_posterior(
          model,
          text_frozen,
          params,
          frozen.get("text"),
          batch["neg_ids"],
          batch["neg_mask"],
      )
      neg_mu = neg_mu.astype(jnp.float32)
      negatives = neg_mu + jnp.exp(0.5 * neg_lv.astype(jnp.float32)) * (
          jax.random.normal(jax.random.fold_in(k_eps, 1), neg_mu.shape)
      )
      negatives_valid = jnp.any(batch["neg_ids"] != ids, axis=1)
    loss_clip = losses.contrastive(
        z_text,
        img_emb,
        logit_scale,
        c.loss.logit_scale_kind,
        negatives=negatives,
        negatives_valid=negatives_valid,
    )
    loss_tv = losses.total_variation(z_text).mean()
    total = (
        c.loss.flow_weight * loss_flow
        + kl_w * kl_raw
        + c.loss.clip_weight * loss_clip
        + c.loss.tv_weight * loss_tv
    )
    align_weight = c.loss.align_weight
    align_w = jnp.float32(align_weight)
    loss_align = jnp.float32(0.0)
    if align_weight > 0:
      # Only when on: computed at weight 0 it changes how XLA fuses the step,
      # and the documented seeds' runs no longer reproduce bit for bit.
      loss_align = losses.alignment_per_example(mu, x1).mean()
      total = total + align_w * loss_align
    loss_lpips = jnp.float32(0.0)
    lpips_w = jnp.float32(0.0)
    if perceptual is not None:
      # On the decoded one-step estimate of the image, against the image.
      latent_params = frozen.get("latent", {})
      x1_hat = flow.one_step_estimate(x_t, v_pred, t)
      images_hat = ae_lib.decode_latent(
          autoencoder, latent_params, x1_hat, stats
      )
      target_images = ae_lib.decode_latent(
          autoencoder, latent_params, x1_target, stats
      )
      loss_lpips = perceptual.distance(
          frozen["lpips"], images_hat, target_images
      ).mean()
      lpips_w = losses.window_weight(
          step, c.loss.lpips_weight, c.loss.lpips_start, c.loss.lpips_stop
      )
      total = total + lpips_w * loss_lpips

    def per_ex_norm(x):
      return jnp.sqrt(jnp.square(x).reshape(x.shape[0], -1).sum(1)).mean()

    bucket_sum, bucket_count = timesteps.bucket_sums(flow_per_ex, t, edges)
    z_norm, x_norm = per_ex_norm(z_text), per_ex_norm(x1)
    aux = {
        # loss_* are the weighted terms (they add up to loss); *_raw are
        # the terms before their weight.
        "loss": total,
        "loss_flow": c.loss.flow_weight * loss_flow,
        "flow_raw": loss_flow,
        "loss_kl": kl_w * kl_raw,
        "kl_raw": kl_raw,
        "kl_weight": kl_w,
        "loss_clip": c.loss.clip_weight * loss_clip,
        "clip_raw": loss_clip,
        "clip_weight": jnp.float32(c.loss.clip_weight),
        "loss_tv": c.loss.tv_weight * loss_tv,
        "tv_raw": loss_tv,
        "tv_weight": jnp.float32(c.loss.tv_weight),
        "loss_lpips": lpips_w * loss_lpips,
        "lpips_raw": loss_lpips,
        "lpips_weight": lpips_w,
        "loss_align": align_w * loss_align,
        "align_raw": loss_align,
        "align_weight": align_w,
        "logit_scale": logit_scale,
        "z_text_norm": z_norm,
        "x1_norm": x_norm,
        "norm_ratio": z_norm / x_norm,
        "mu_min": mu.min(),
        "mu_max": mu.max(),
        "mu_mean": mu.mean(),
        "logvar_min": log_var.min(),
        "logvar_max": log_var.max(),
        "logvar_mean": log_var.mean(),
        "flow_bucket_sum": bucket_sum,
        "flow_bucket_count": bucket_count,
    }
    return total, aux

  return loss


def make_generate(config, model, autoencoder, text_frozen):
  """generate(params, frozen, stats, ids, mask, rng, cfg_scale) -> images [0,1].

  `frozen` is {"text": a frozen text encoder's weights, "latent": the latent
  space's}, either may be empty. z_text comes from the head (its mean, or a draw), then the ODE carries it
  to the image latent; the latent is un-standardised and decoded.
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
    apply = functools.partial(model.apply, {"params": params})
    mu, log_var = generator_lib.text_posterior(
        model, text_frozen, params, frozen_params.get("text"), ids, mask
    )
    z = (
        mu
        if use_mean
        else mu
        + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape, mu.dtype)
    )

    def velocity(x, t, indicator):
      out = apply(
          x,
          timesteps.time_input(t, c.flow.time_input),
          indicator,
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

    x1 = flow.integrate(
        velocity, z.astype(jnp.float32), num_steps, method, cfg_scale
    )
    return ae_lib.decode_latent(
        autoencoder, frozen_params.get("latent", {}), x1, stats
    )

  return jax.jit(
      generate, static_argnames=("num_steps", "method", "cfg_scale", "use_mean")
  )
