"""One place that assembles a run: checks, model, sharded state, sampler,
restore, and a trained run rebuilt from its workdir.

Training (`train.py`), sampling, evaluation, the health checks and `perf`
all build their pieces here, so they cannot drift apart. Nothing here
imports the training loop or the evaluators.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from txt2img_jax import assets
from txt2img_jax import checkpointing
from txt2img_jax import flow
from txt2img_jax import latents
from txt2img_jax import losses
from txt2img_jax import objectives
from txt2img_jax import optim
from txt2img_jax import perceptual as perceptual_lib
from txt2img_jax import sharding
from txt2img_jax import timesteps
from txt2img_jax.data import sources
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import generator as generator_lib


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite: jax.Array  # Steps skipped because loss or gradients were not finite.


# ---------------------------------------------------------------------------
# Building the run's pieces (shared with sample.py, evaluate.py, the health checks, perf).
# ---------------------------------------------------------------------------

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def validate_config(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """Every check that needs no compilation; returns the latent shape.

  Also sets the config's PRNG implementation for the process (a jax-wide
  setting, so it must precede every key: each command validates first).
  """
  from txt2img_jax.models import text_head as text_head_lib
  use_prng_impl(config)
  sources.validate(config)
  shape = latents.latent_shape(config)
  text_head_lib.check_text_head_config(
      config.head.kind, shape, **generator_lib.head_kwargs(config.head))
  timesteps.validate_time_config(config.time.sampler)
  timesteps.validate_start_prob(config.time.get("start_prob", 0.0))
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
  model_axis = config.mesh.model
  if model_axis < 1 or jax.device_count() % model_axis:
    raise ValueError(f"mesh.model={model_axis} must divide the "
                     f"{jax.device_count()} devices")
  data_axis = (config.mesh.data if config.mesh.data > 0
               else jax.device_count() // model_axis)
  if config.batch_size % data_axis:
    raise ValueError(f"batch_size={config.batch_size} must divide over the "
                     f"mesh's data axis of {data_axis} devices")
  for name, group in config.optim.groups.items():
    lr = group.lr
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
      raise ValueError(f"optim.groups.{name}.lr={lr} must be a finite "
                       "number >= 0")
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
  if config.loss.kl_kind not in losses.KL_KINDS:
    raise ValueError(f"loss.kl_kind={config.loss.kl_kind!r}: expected one of "
                     f"{losses.KL_KINDS}")
  if config.loss.logit_scale_kind not in losses.LOGIT_SCALE_KINDS:
    raise ValueError(f"loss.logit_scale_kind={config.loss.logit_scale_kind!r}:"
                     f" expected one of {losses.LOGIT_SCALE_KINDS}")
  if not 0.0 <= config.loss.cfg_null_prob < 1.0:
    raise ValueError("loss.cfg_null_prob must be in [0, 1)")
  if config.loss.get("clip_target", "tower") not in losses.CLIP_TARGETS:
    raise ValueError(f"loss.clip_target={config.loss.clip_target!r}: "
                     f"expected one of {losses.CLIP_TARGETS}")
  if config.loss.get("hard_negatives", False):
    if config.get("objective", "crossflow") != "crossflow":
      raise ValueError("loss.hard_negatives is a term of the crossflow "
                       "objective's contrastive loss; objective="
                       f"{config.objective!r} has none")
    if config.data.get("cache_text", False) and config.text_encoder.name:
      # (Without a frozen encoder nothing is cached: cache_text is moot.)
      raise ValueError("loss.hard_negatives needs the text encoder to run on "
                       "the negative captions: set data.cache_text=False")
  if config.loss.get("hard_negative_words", ""):
    from txt2img_jax.data import negatives
    negatives.parse_word_classes(config.loss.hard_negative_words)
  elif (config.loss.get("hard_negatives", False)
        and config.data.name in ("folder", "tfds")):
    from txt2img_jax.data import negatives
    raise negatives.words_not_named(config.data.name)
  if config.loss.get("align_weight", 0.0) < 0:
    raise ValueError("loss.align_weight must be >= 0")
  if config.sample.method not in flow.SAMPLERS:
    raise ValueError(f"sample.method={config.sample.method!r}: expected one "
                     f"of {flow.SAMPLERS}")
  objectives.get(config.get("objective", "crossflow"))
  options = train_compiler_options(config)
  if options:
    try:  # XLA knows its options: a trivial compile names a bad one now.
      jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"xla_cpu_options={config.xla_cpu_options!r}: "
                       f"{str(e).splitlines()[0]}") from None
  return shape


def parse_xla_options(text: str) -> dict[str, bool | int | float | str]:
  """'name=value;name=value' -> {name: value}: every name an XLA option;
  true/false become booleans and numbers numbers, as XLA types them."""
  options = {}
  for item in filter(None, (i.strip() for i in text.split(";"))):
    name, eq, value = (part.strip() for part in item.partition("="))
    if not eq or not name.startswith("xla_") or not value:
      raise ValueError(f"xla_cpu_options: {item!r} is not 'xla_<name>=<value>'"
                       " (items separated by ';', e.g. "
                       "'xla_disable_hlo_passes=tree_reduction_rewriter')")
    if name in options:
      raise ValueError(f"xla_cpu_options: {name} is given twice")
    options[name] = _xla_value(value)
  return options


def _xla_value(text: str) -> bool | int | float | str:
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def train_compiler_options(config) -> dict | None:
  """The train step's XLA options: `config.xla_cpu_options` on a CPU backend,
  none elsewhere (or for a config saved before the field existed)."""
  if jax.default_backend() != "cpu":
    return None
  return parse_xla_options(config.get("xla_cpu_options", "")) or None


def use_prng_impl(config) -> None:
  """jax's default PRNG as `config.prng_impl` says (threefry2x32 if absent,
  as in runs saved before the field existed)."""
  impl = config.get("prng_impl", "threefry2x32")
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng_impl={impl!r}: expected one of {PRNG_IMPLS}")
  jax.config.update("jax_default_prng_impl", impl)


def build_model(config, latent_shape, vocab_size: int, embedded: bool):
  objective = objectives.get(config.get("objective", "crossflow"))
  if hasattr(objective, "build_model"):  # Its own model (noise_flow).
    return objective.build_model(config, latent_shape, vocab_size, embedded)
  return generator_lib.CrossFlow.from_config(config, latent_shape,
                                            vocab_size, embedded)


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


def init_keys(config) -> tuple[jax.Array, jax.Array]:
  """(the key of a run's initial parameters, its training randomness')."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return init_rng, state_rng


def initial_params(run: "Run"):
  """The parameters `run` started from at step 0 (its seed's init)."""
  use_prng_impl(run.config)
  return nn.unbox(init_variables(run.model, run.config, run.parts.latent_shape,
                                 run.text.width, init_keys(run.config)[0]))


def create_train_state(config, model, latent_shape, text_width, mesh, rules):
  """(tx, schedules, state, state_shardings), the state created sharded."""
  init_rng, state_rng = init_keys(config)
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


def jit_train_step(train_step, state_shardings, mesh,
                   compiler_options: dict | None = None):
  """Explicit in/out shardings; the state is donated (updated in place).
  compiler_options: XLA options for this step (`train_compiler_options`)."""
  repl = sharding.replicated(mesh)
  return jax.jit(
      train_step, donate_argnums=(0,),
      in_shardings=(state_shardings, sharding.batch_sharding(mesh), repl,
                    repl),
      out_shardings=(state_shardings, repl),
      compiler_options=compiler_options)


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
  raw = dit_layout(config)(raw)  # The other run's DiT may be (un)scanned.
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


def dit_layout(config):
  """The converter of a checkpoint's DiT blocks to this config's layout
  (stacked under flow.scan, else one subtree per block); both leave a tree
  already in that layout unchanged."""
  return (dit_lib.stack_block_params if config.flow.get("scan", False)
          else dit_lib.unstack_block_params)


def _run_dir(path: str) -> str:
  """The workdir above a checkpoints dir or step dir."""
  directory, _ = checkpointing.resolve_checkpoint(path)
  return os.path.dirname(directory)


# ---------------------------------------------------------------------------
# What every command builds from a config, and a trained run from its workdir.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Parts:
  """The pieces of a run that do not depend on its weights."""
  config: Any
  latent_shape: tuple[int, int, int]
  text: assets.TextSide
  autoencoder: Any            # A latent space (txt2img_jax/latents.py).
  model: Any                  # The CrossFlow module.

  @property
  def frozen(self) -> dict:
    """The frozen weights every jitted function takes as an argument."""
    return {"text": self.text.frozen_params, "latent": self.autoencoder.params}


def build_parts(config, workdir: str | None = None, data=None,
                autoencoder=None) -> Parts:
  """`data` gives the embedded text encoder its vocabulary (else the run's
  saved one); `autoencoder`, when already built, is reused."""
  latent_shape = validate_config(config)
  text = assets.load_text(config, workdir, data)
  check_text_cache(config, data, text)
  autoencoder = autoencoder or latents.build(config)
  model = build_model(config, latent_shape, text.vocab_size,
                      text.frozen is None)
  return Parts(config, latent_shape, text, autoencoder, model)


def check_text_cache(config, data, text: assets.TextSide) -> None:
  """Cached text features are read only if this run's encoder made them.

  The prepared directory is already named by the encoder's fingerprint, so
  this fails only if data and encoder were put together by hand; a stale
  cache must then stop the run, not train it on another encoder's features.
  """
  extras = getattr(data, "extras", lambda: {})()
  if "text_tokens" not in extras:
    return
  where = getattr(data, "out_dir", "the prepared data")
  if text.frozen is None:
    raise ValueError(f"{where} holds cached text features, but this run "
                     "trains its own text encoder; prepare without "
                     "data.cache_text, or set text_encoder.name")
  made_by = data.manifest["fingerprint"]["featurize"].get("text")
  if made_by != text.frozen.fingerprint():
    raise ValueError(f"{where} holds text features of another encoder "
                     f"({made_by}, this run's is "
                     f"{text.frozen.fingerprint()}); prepare again with "
                     "--config.data.rebuild=True")
  shape = tuple(extras["text_tokens"]["shape"][1:])
  if shape != (config.data.max_len, text.width):
    raise ValueError(f"{where}: cached text features are {shape} per "
                     f"caption, this run needs ({config.data.max_len}, "
                     f"{text.width}); prepare again with "
                     "--config.data.rebuild=True")


@dataclasses.dataclass
class Run:
  """A trained run rebuilt from its workdir: sample.py, evaluate.py, the
  health checks and the experiments start here."""
  workdir: str
  config: Any
  step: int
  parts: Parts
  builder: Any
  generate: Any
  ema_params: Any
  stats: ae_lib.LatentStats

  @property
  def text(self) -> assets.TextSide:
    return self.parts.text

  @property
  def model(self):
    return self.parts.model

  @property
  def autoencoder(self):
    return self.parts.autoencoder

  @property
  def frozen(self) -> dict:
    return self.parts.frozen


def load_run(workdir: str, with_data: bool = True) -> Run:
  workdir = os.path.abspath(workdir)
  config = assets.load_config(workdir)
  parts = build_parts(config, workdir)
  raw, step = checkpointing.load_raw(workdir)
  raw = dit_layout(config)(raw)
  generate = make_generate_fn(config, parts.model, parts.autoencoder,
                              parts.text.frozen)
  builder = (assets.prepare_data(config, parts.autoencoder) if with_data
             else None)
  return Run(workdir=workdir, config=config, step=step, parts=parts,
             builder=builder, generate=generate,
             ema_params=jax.device_put(raw["ema_params"]),
             stats=assets.load_latent_stats(workdir))
