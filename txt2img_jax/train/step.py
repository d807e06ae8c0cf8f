"""The generic train step: gradients, the optimizer, the non-finite guard,
EMA, and the norms and learning rates every run logs.

The loss comes from the configured objective (`objectives/`); nothing here
knows its terms. Imported by training and by `perf`, so it stays light.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from txt2img_jax import objectives
from txt2img_jax.train import optim


def make_train_step(config, loss_fn, tx, schedules):
  """Returns train_step(state, batch, frozen, stats) -> (state, metrics).

  loss_fn(params, batch, rng, step, frozen, stats) -> (loss, aux) is the
  objective's; `frozen` holds the weights that do not train.
  """
  c = config
  labels = optim.param_group_labels

  def train_step(state, batch, frozen, stats):
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(
        state.params, batch, rng, state.step, frozen, stats
    )
    updates, new_opt = tx.update(
        grads, state.opt_state, state.params, step=state.step
    )
    new_params = optax.apply_updates(state.params, updates)
    group_labels = labels(grads)

    # A step with a non-finite loss, gradient or update is skipped, and
    # counted; so is an update above max_update_ratio x the parameters (the
    # loop then stops the run). Skipped: params, moments and EMA unchanged.
    ratios = optim.group_global_norms(updates, group_labels)
    for g, p in optim.group_global_norms(state.params, group_labels).items():
      ratios[g] = ratios[g] / jnp.maximum(p, 1e-6)
    ratio = jnp.max(jnp.stack(list(ratios.values())))
    finite = (
        jnp.isfinite(aux["loss"])
        & jnp.isfinite(optax.tree.norm(grads))
        & jnp.isfinite(ratio)
    )
    bound = c.max_update_ratio
    ok = finite & ((bound <= 0) | (ratio <= bound))
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n, o), new, old
    )
    new_params = keep(new_params, state.params)
    new_opt = keep(new_opt, state.opt_state)

    decay = jnp.float32(c.ema_decay)
    if c.ema_warmup:
      s = state.step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
    new_ema = keep(
        jax.tree.map(
            lambda e, p: decay * e + (1 - decay) * p,
            state.ema_params,
            new_params,
        ),
        state.ema_params,
    )

    metrics = dict(aux)
    metrics["skipped"] = ~ok
    metrics["update_ratio"] = ratio
    for g, v in ratios.items():
      metrics[f"update_ratio/{g}"] = v
    metrics["grad_norm"] = optax.tree.norm(grads)
    for g, v in optim.group_global_norms(grads, group_labels).items():
      metrics[f"grad_norm/{g}"] = v
    for g, v in optim.group_global_norms(new_params, group_labels).items():
      metrics[f"param_norm/{g}"] = v
    for g, v in optim.current_lrs(schedules, state.step).items():
      metrics[f"lr/{g}"] = v
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        ema_params=new_ema,
        opt_state=new_opt,
        nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
    )
    metrics["nonfinite_steps"] = new_state.nonfinite
    return new_state, metrics

  return train_step


def for_parts(config, parts, tx, schedules, perceptual=None):
  """The train step of `config.objective` over assembled parts."""
  objective = objectives.get(config.objective)
  loss_fn = objective.make_loss(
      config, parts.model, parts.autoencoder, parts.text.frozen, perceptual
  )
  return make_train_step(config, loss_fn, tx, schedules)
