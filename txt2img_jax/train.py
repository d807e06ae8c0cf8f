"""train_and_evaluate(config, workdir): the whole run, read top to bottom.

logging -> checks -> mesh -> input -> model and optimiser -> sharded init ->
restore -> train step -> evaluators -> loop.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from absl import logging
from clu import metric_writers
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from txt2img_jax import assets
from txt2img_jax import checkpointing
from txt2img_jax import config_lib
from txt2img_jax import flow
from txt2img_jax import evaluate
from txt2img_jax import losses
from txt2img_jax import optim
from txt2img_jax import perceptual as perceptual_lib
from txt2img_jax import preemption
from txt2img_jax import reporting
from txt2img_jax import sharding
from txt2img_jax import timesteps
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import generator as generator_lib


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite: jax.Array  # Steps skipped because loss or gradients were not finite.


# ---------------------------------------------------------------------------
# The train step: pure, closes over static things only.
# ---------------------------------------------------------------------------

def text_posterior(model, text_frozen, params, frozen_text, ids, mask):
  """(mu, log_var) of the text head for a batch of captions: the tokens come
  from the frozen pretrained encoder when there is one (no gradient), else
  from the model's own text encoder. The train step, the sampler and the
  experiments all call this."""
  if text_frozen is not None:
    tokens = jax.lax.stop_gradient(text_frozen.apply(frozen_text, ids, mask))
  else:
    tokens = model.apply({"params": params}, ids, mask, method="encode_text")
  return model.apply({"params": params}, tokens, mask, method="posterior")


def make_train_step(config, model, tx, schedules, autoencoder, text_frozen,
                    perceptual=None):
  """Returns train_step(state, batch, frozen, stats) -> (state, metrics).

  `frozen` holds the weights that do not train: {"text": a pretrained text
  encoder's, "lpips": the perceptual net's}; either may be absent.
  """
  c = config
  sigma_min = c.flow.sigma_min
  edges = timesteps.t_bucket_edges(c.time.num_buckets)
  labels = optim.param_group_labels

  def loss_fn(params, state, batch, frozen, stats):
    rng = jax.random.fold_in(state.rng, state.step)
    k_lat, k_eps, k_null, k_swap, k_t = jax.random.split(rng, 5)
    ids, mask = batch["ids"], batch["mask"]
    apply = functools.partial(model.apply, {"params": params})

    mu, log_var = text_posterior(model, text_frozen, params, frozen.get("text"),
                                 ids, mask)
    mu = mu.astype(jnp.float32)
    log_var = log_var.astype(jnp.float32)
    z_text = mu + jnp.exp(0.5 * log_var) * jax.random.normal(k_eps, mu.shape)

    # The one encode path, shared with the latent stats and health checks.
    x1 = ae_lib.encode_latent(autoencoder, batch["image"], k_lat, stats)

    b = ids.shape[0]
    null = jax.random.bernoulli(k_null, c.loss.cfg_null_prob, (b,))
    x1_target = losses.swap_null_targets(k_swap, null, x1)
    indicator = 1 - null.astype(jnp.int32)

    t = timesteps.sample_t(k_t, b, c.time.sampler, state.step)
    x_t = flow.interpolate(z_text, x1_target, t, sigma_min)
    v_target = flow.velocity_target(z_text, x1_target, sigma_min)
    v_pred = apply(x_t, timesteps.time_input(t, c.flow.time_input), indicator,
                   method="velocity")
    flow_per_ex = losses.flow_mse_per_example(v_pred, v_target)
    loss_flow = flow_per_ex.mean()

    kl_raw = losses.kl_to_standard_normal(mu, log_var).mean()
    kl_w = losses.kl_weight(state.step, c.loss.kl_weight, c.loss.kl_warmup_steps)
    img_emb, logit_scale = apply(x1, method="embed_image")
    loss_clip = losses.contrastive(z_text, img_emb, logit_scale)
    loss_tv = losses.total_variation(z_text).mean()

    total = (c.loss.flow_weight * loss_flow + kl_w * kl_raw
             + c.loss.clip_weight * loss_clip + c.loss.tv_weight * loss_tv)
    loss_lpips = jnp.float32(0.0)
    lpips_w = jnp.float32(0.0)
    if perceptual is not None:
      # On the decoded one-step estimate of the image, against the image.
      x1_hat = flow.one_step_estimate(x_t, v_pred, t)
      images_hat = ae_lib.decode_latent(autoencoder, x1_hat, stats)
      target_images = ae_lib.decode_latent(autoencoder, x1_target, stats)
      loss_lpips = perceptual.distance(frozen["lpips"], images_hat,
                                       target_images).mean()
      lpips_w = losses.window_weight(state.step, c.loss.lpips_weight,
                                     c.loss.lpips_start, c.loss.lpips_stop)
      total = total + lpips_w * loss_lpips

    def per_ex_norm(x):
      return jnp.sqrt(jnp.square(x).reshape(x.shape[0], -1).sum(1)).mean()

    bucket_sum, bucket_count = timesteps.bucket_sums(flow_per_ex, t, edges)
    z_norm, x_norm = per_ex_norm(z_text), per_ex_norm(x1)
    aux = {
        # loss_* are the weighted terms (they add up to loss); *_raw are
        # the terms before their weight.
        "loss": total, "loss_flow": c.loss.flow_weight * loss_flow,
        "flow_raw": loss_flow,
        "loss_kl": kl_w * kl_raw, "kl_raw": kl_raw, "kl_weight": kl_w,
        "loss_clip": c.loss.clip_weight * loss_clip, "clip_raw": loss_clip,
        "clip_weight": jnp.float32(c.loss.clip_weight),
        "loss_tv": c.loss.tv_weight * loss_tv, "tv_raw": loss_tv,
        "tv_weight": jnp.float32(c.loss.tv_weight),
        "loss_lpips": lpips_w * loss_lpips, "lpips_raw": loss_lpips,
        "lpips_weight": lpips_w,
        "logit_scale": logit_scale,
        "z_text_norm": z_norm, "x1_norm": x_norm, "norm_ratio": z_norm / x_norm,
        "mu_min": mu.min(), "mu_max": mu.max(), "mu_mean": mu.mean(),
        "logvar_min": log_var.min(), "logvar_max": log_var.max(),
        "logvar_mean": log_var.mean(),
        "flow_bucket_sum": bucket_sum, "flow_bucket_count": bucket_count,
    }
    return total, aux

  def train_step(state, batch, frozen, stats):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(state.params, state, batch, frozen, stats)
    updates, new_opt = tx.update(grads, state.opt_state, state.params,
                                 step=state.step)
    new_params = optax.apply_updates(state.params, updates)
    group_labels = labels(grads)

    # A step with a non-finite loss, gradient or update is skipped, and
    # counted; so is an update above max_update_ratio x the parameters (the
    # loop then stops the run). Skipped: params, moments and EMA unchanged.
    ratios = optim.group_global_norms(updates, group_labels)
    for g, p in optim.group_global_norms(state.params, group_labels).items():
      ratios[g] = ratios[g] / jnp.maximum(p, 1e-6)
    ratio = jnp.max(jnp.stack(list(ratios.values())))
    finite = (jnp.isfinite(aux["loss"]) & jnp.isfinite(optax.tree.norm(grads))
              & jnp.isfinite(ratio))
    bound = c.get("max_update_ratio", 0.0)  # Absent in older runs' configs.
    ok = finite & ((bound <= 0) | (ratio <= bound))
    keep = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(ok, n, o), new, old)
    new_params = keep(new_params, state.params)
    new_opt = keep(new_opt, state.opt_state)

    decay = jnp.float32(c.ema_decay)
    if c.ema_warmup:
      s = state.step.astype(jnp.float32)
      decay = jnp.minimum(decay, (1.0 + s) / (10.0 + s))
    new_ema = keep(jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                                state.ema_params, new_params),
                   state.ema_params)

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
        step=state.step + 1, params=new_params, ema_params=new_ema,
        opt_state=new_opt, nonfinite=state.nonfinite + (~finite).astype(jnp.int32))
    metrics["nonfinite_steps"] = new_state.nonfinite
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------------------
# Building the run's pieces (shared with sample.py, evaluate.py, health.py).
# ---------------------------------------------------------------------------

def validate_config(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """Every check that needs no compilation; returns the latent shape."""
  from txt2img_jax.models import text_head as text_head_lib
  shape = config_lib.latent_shape(config)
  text_head_lib.check_text_head_config(
      config.head.kind, shape, **generator_lib.head_kwargs(config))
  timesteps.validate_time_config(config.time.sampler)
  timesteps.time_input(jnp.zeros((1,)), config.flow.time_input)
  p = config.flow.patch_size
  if shape[0] % p or shape[1] % p:
    raise ValueError(f"flow.patch_size={p} does not divide the latent "
                     f"{shape[0]}x{shape[1]} (data.image_size="
                     f"{config.data.image_size}, autoencoder.factor="
                     f"{config.autoencoder.factor})")
  if config.flow.width % config.flow.num_heads:
    raise ValueError(f"flow.width={config.flow.width} is not divisible by "
                     f"flow.num_heads={config.flow.num_heads}")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} must divide over "
                     f"{jax.process_count()} hosts")
  for name in ("total_steps", "batch_size", "log_every"):
    if config[name] < 1:
      raise ValueError(f"{name} must be >= 1, got {config[name]}")
  if config.loss.lpips_weight > 0 and config.loss.lpips_net not in (
      perceptual_lib.NETS):
    raise ValueError(f"loss.lpips_net={config.loss.lpips_net!r}: expected "
                     f"one of {perceptual_lib.NETS}")
  if not 0.0 <= config.ema_decay <= 1.0:
    raise ValueError(f"ema_decay={config.ema_decay} must lie in [0, 1] "
                     "(0.999 keeps ~1000 steps)")
  # .get: configs saved by older runs lack these two.
  if config.get("max_skipped_steps", 0) < 0:
    raise ValueError(f"max_skipped_steps={config.max_skipped_steps} must be "
                     ">= 0 (0: never stop on skipped steps)")
  if not config.get("max_update_ratio", 0.0) >= 0:
    raise ValueError(f"max_update_ratio={config.max_update_ratio} must be "
                     ">= 0 (0: no bound)")
  if not 0.0 <= config.loss.cfg_null_prob < 1.0:
    raise ValueError("loss.cfg_null_prob must be in [0, 1)")
  if config.sample.method not in ("euler", "heun"):
    raise ValueError(f"sample.method={config.sample.method!r}: euler | heun")
  return shape


def build_model(config, latent_shape, vocab_size: int, embedded: bool):
  return generator_lib.CrossFlow(
      config=config, latent_shape=latent_shape, vocab_size=vocab_size,
      embedded_text_encoder=embedded)


def init_variables(model, config, latent_shape, text_width, rng):
  """Boxed (logically named) params from dummy inputs; use under eval_shape."""
  b, length = 2, config.data.max_len
  ids = jnp.zeros((b, length), jnp.int32)
  mask = jnp.ones((b, length), jnp.int32)
  tokens = jnp.zeros((b, length, text_width), jnp.float32)
  x1 = jnp.zeros((b,) + tuple(latent_shape), jnp.float32)
  return model.init(rng, ids, mask, tokens, x1, jnp.zeros((b,)),
                    jnp.ones((b,), jnp.int32))["params"]


def make_generate_fn(config, model, autoencoder, text_frozen):
  """generate(params, frozen, stats, ids, mask, rng, cfg_scale) -> images [0,1].

  z_text comes from the head (its mean, or a draw), then the ODE carries it
  to the image latent; the latent is un-standardised and decoded.
  """
  c = config

  def generate(params, frozen_params, stats, ids, mask, rng, *,
               num_steps, method, cfg_scale, use_mean):
    apply = functools.partial(model.apply, {"params": params})
    mu, log_var = text_posterior(model, text_frozen, params, frozen_params,
                                 ids, mask)
    z = mu if use_mean else mu + jnp.exp(0.5 * log_var) * jax.random.normal(
        rng, mu.shape, mu.dtype)

    def velocity(x, t, indicator):
      return apply(x, timesteps.time_input(t, c.flow.time_input), indicator,
                   method="velocity").astype(jnp.float32)

    x1 = flow.integrate(velocity, z.astype(jnp.float32), num_steps, method,
                        cfg_scale)
    return ae_lib.decode_latent(autoencoder, x1, stats)

  return jax.jit(generate, static_argnames=("num_steps", "method",
                                            "cfg_scale", "use_mean"))


def create_train_state(config, model, latent_shape, text_width, mesh, rules):
  """(tx, schedules, state, state_shardings), the state created sharded."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  boxed = jax.eval_shape(functools.partial(
      init_variables, model, config, latent_shape, text_width), init_rng)
  tx, schedules = optim.make_optimizer(config, nn.unbox(boxed))

  def init_state(key):
    params = nn.unbox(init_variables(model, config, latent_shape, text_width,
                                     key))
    return TrainState(step=jnp.int32(0), params=params,
                      ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), rng=state_rng,
                      nonfinite=jnp.int32(0))

  abstract_state = jax.eval_shape(init_state, init_rng)
  param_shardings = sharding.state_shardings(boxed, mesh, rules)
  state_shardings = train_state_shardings(abstract_state, param_shardings,
                                          mesh)
  with mesh:
    state = jax.jit(init_state, out_shardings=state_shardings)(init_rng)
  return tx, schedules, state, state_shardings


def jit_train_step(train_step, state_shardings, mesh):
  """Explicit in/out shardings; the state is donated (updated in place)."""
  repl = sharding.replicated(mesh)
  return jax.jit(
      train_step, donate_argnums=(0,),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl,
                    repl),
      out_shardings=(state_shardings, repl))


# ---------------------------------------------------------------------------
# train_and_evaluate
# ---------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint); returns the
  final train metrics and the last evaluation."""
  # --- Logging and checks (before anything compiles).
  latent_shape = validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  assets.save_config(config, workdir, latent_shape)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=True)
  writer.write_hparams(assets.flat_hparams(config))

  # --- Mesh.
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules)
  logging.info("mesh %s over %d devices (%s)", dict(mesh.shape),
               jax.device_count(), jax.devices()[0].platform)

  # --- Input: data, tokenizer, latent statistics.
  data = assets.prepare_data(config)
  text = assets.load_text(config, workdir)
  autoencoder = ae_lib.PixelAutoencoder(config.autoencoder.factor)
  stats = assets.latent_stats(config, workdir, data, autoencoder)

  # --- Model, optimiser and sharded init (shapes first, then each array
  # is created where it lives).
  model = build_model(config, latent_shape, text.vocab_size,
                      text.frozen is None)
  tx, schedules, state, state_shardings = create_train_state(
      config, model, latent_shape, text.width, mesh, rules)
  logging.info("parameters: %s", reporting.param_counts(state.params))

  # --- Restore: resume this run, or take weights from another (init_from).
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  resumed = ckpt.latest_step() is not None
  if resumed:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state, state_shardings)
    state = ckpt.restore(abstract)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  elif config.init_from:
    state, tx, schedules = init_from_other_run(
        config, state, tx, schedules, state_shardings)
  start_step = int(state.step)

  # --- The jitted train step: donated state, explicit shardings.
  perceptual = (perceptual_lib.load(config.loss.lpips_net)
                if config.loss.lpips_weight > 0 else None)
  frozen = jax.device_put(
      {"text": text.frozen_params,
       "lpips": perceptual.params if perceptual else {}},
      sharding.replicated(mesh))
  stats_dev = jax.device_put(stats, sharding.replicated(mesh))
  p_train_step = jit_train_step(
      make_train_step(config, model, tx, schedules, autoencoder, text.frozen,
                      perceptual),
      state_shardings, mesh)

  # --- Evaluators: sample grid and structure benchmark (EMA params).
  generate = make_generate_fn(config, model, autoencoder, text.frozen)
  evaluator = evaluate.Evaluator(config, workdir, data, text, generate,
                                frozen["text"], stats_dev, writer)

  # --- Loop.
  total = config.total_steps
  batches = assets.train_batches(config, data, text, start_step)
  reporter = reporting.Reporter(config, workdir, writer, start_step, total)
  hooks = reporting.Periodic(config, total)
  pending = None  # Metrics are fetched one step late: logging never stalls.
  last_eval = {}
  with mesh, preemption.StopOnSignal() as stop:
    for step in range(start_step, total):
      batch = sharding.put_batch(next(batches), mesh)
      state, metrics = p_train_step(state, batch, frozen, stats_dev)
      if pending is not None:
        reporter.add(*pending)
      pending = (step + 1, metrics)
      done = step + 1
      stopping = stop.requested(done)  # SIGTERM / SIGINT / preemption.
      # A state is checked (its metrics fetched) before it is saved.
      if hooks.log(done) or done == total or hooks.checkpoint(done) or stopping:
        reporter.add(*pending)
        pending = None
      if reporter.failure:  # Runaway updates: keep the last good checkpoint.
        reporter.flush(done)
        ckpt.close()
        writer.flush()
        raise reporting.RunawayError(
            f"run stopped: {reporter.failure}. {ckpt.describe_latest()}")
      if hooks.log(done) or done == total:
        reporter.flush(done)
      if hooks.checkpoint(done) or stopping:
        ckpt.save(done, state)
      if hooks.sample(done):
        evaluator.sample_grid(state.ema_params, done)
      if hooks.eval(done):
        last_eval = evaluator.benchmark(state.ema_params, done)
      if stopping:
        reporter.save_partial(done)
        ckpt.wait()
        stop.report(done, ckpt.directory)
        break
      reporting.check_compiles(p_train_step, config.max_compiles)
  if pending is not None:
    reporter.add(*pending)
    reporter.flush(total)
  if ckpt.latest_step() != total and int(state.step) == total:
    ckpt.save(total, state)
  ckpt.close()
  writer.flush()
  return {"train": reporter.last, "eval": last_eval,
          "compiles": reporting.num_compiles(p_train_step),
          "resumed": resumed, "start_step": start_step}


# ---------------------------------------------------------------------------
# Shardings of the whole state, and taking weights from another run.
# ---------------------------------------------------------------------------

def train_state_shardings(abstract_state: TrainState, param_shardings,
                          mesh) -> TrainState:
  """Params and EMA as the logical rules say; optimizer moments like the
  parameter they belong to (matched by path suffix and shape); the rest
  replicated."""
  by_path = {}
  for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
    by_path[jax.tree_util.keystr(path)] = s
  param_shapes = {jax.tree_util.keystr(p): l.shape for p, l in
                  jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
  repl = sharding.replicated(mesh)

  def like_param(path, leaf):
    for i in range(len(path)):
      key = jax.tree_util.keystr(path[i:])
      if key in by_path and param_shapes[key] == leaf.shape:
        return by_path[key]
    return repl

  opt = jax.tree_util.tree_map_with_path(like_param, abstract_state.opt_state)
  return TrainState(step=repl, params=param_shardings,
                    ema_params=param_shardings, opt_state=opt, rng=repl,
                    nonfinite=repl)


def init_from_other_run(config, state: TrainState, tx, schedules,
                        state_shardings):
  """Weights (and EMA) from config.init_from; a new LR cycle from step 0.

  The new cycle's peak is restart.peak_factor x each group's configured lr,
  and its floor is the lr the old run had reached (read from its config and
  step). Parameters whose path or shape differ (a swapped head) are freshly
  initialised; the table of what was loaded is logged.
  """
  raw, old_step = checkpointing.load_raw(config.init_from)
  host = jax.device_get(state)
  params, table = checkpointing.merge_matching(host.params, raw["params"])
  ema, _ = checkpointing.merge_matching(host.ema_params, raw["ema_params"])
  logging.info("init_from %s (step %d):", config.init_from, old_step)
  checkpointing.log_merge_table(table)

  old_config = assets.load_config(_run_dir(config.init_from))
  _, old_schedules = optim.make_optimizer(old_config, host.params)
  old_lrs = {g: float(s(old_step)) for g, s in old_schedules.items()
             if g in schedules}
  new_optim = optim.restart_schedules(config, old_lrs, restart_step=0,
                                      peak_factor=config.restart.peak_factor)
  new_config = config.copy_and_resolve_references()
  with new_config.unlocked():
    new_config.optim = new_optim
  tx, schedules = optim.make_optimizer(new_config, params)
  for g in schedules:
    logging.info("  lr %s: old run reached %.3g; new cycle peak %.3g -> "
                 "floor %.3g", g, old_lrs.get(g, float("nan")),
                 float(schedules[g](0)), old_lrs.get(g, float("nan")))

  opt_state = tx.init(params)
  if config.restart.keep_opt_state:
    opt_state, opt_table = checkpointing.merge_matching(opt_state,
                                                        raw["opt_state"])
    logging.info("  optimizer moments kept: %d tensors (%d new)",
                 len(opt_table["loaded"]), len(opt_table["new"]))
  else:
    logging.info("  optimizer moments reset")
  new_state = host.replace(step=np.int32(0), params=params, ema_params=ema,
                           opt_state=opt_state)
  return jax.device_put(new_state, state_shardings), tx, schedules


def _run_dir(path: str) -> str:
  """The workdir above a checkpoints dir or step dir."""
  directory, _ = checkpointing.resolve_checkpoint(path)
  return os.path.dirname(directory)
