"""Checks of a config that need no compilation of the model, and the two
process-wide settings a config makes (jax's PRNG, the step's XLA options).

`validate_config` only checks; `use_prng_impl` is the one setting, called by
whoever makes keys (the loop first thing, `run.build_parts`).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections

from txt2img_jax import objectives
from txt2img_jax.data import sources
from txt2img_jax.models import generator as generator_lib
from txt2img_jax.models import latents
from txt2img_jax.objectives import flow
from txt2img_jax.objectives import losses
from txt2img_jax.objectives import perceptual as perceptual_lib
from txt2img_jax.objectives import timesteps
from txt2img_jax.utils import hub
from txt2img_jax.utils import paths

PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def validate_config(
    config: ml_collections.ConfigDict, devices: int | None = None
) -> tuple[int, int, int]:
  """Every check that needs no compilation; returns the latent shape. It
  sets nothing: `use_prng_impl` is the config's one process-wide setting.
  `devices`: how many the mesh spans (default: this process's jax devices;
  ahead-of-time compilation gives its target's)."""
  from txt2img_jax.models import text_head as text_head_lib

  if config.prng_impl not in PRNG_IMPLS:
    raise ValueError(
        f"prng_impl={config.prng_impl!r}: expected one of " f"{PRNG_IMPLS}"
    )
  sources.validate(config)
  shape = latents.latent_shape(config)
  text_head_lib.check_text_head_config(
      config.head.kind, shape, **generator_lib.head_kwargs(config.head)
  )
  timesteps.validate_time_config(config.time.sampler)
  timesteps.validate_start_prob(config.time.start_prob)
  timesteps.time_input(jnp.zeros((1,)), config.flow.time_input)
  p = config.flow.patch_size
  if shape[0] % p or shape[1] % p:
    raise ValueError(
        f"flow.patch_size={p} does not divide the latent "
        f"{shape[0]}x{shape[1]} (data.image_size="
        f"{config.data.image_size}, autoencoder.factor="
        f"{config.autoencoder.factor})"
    )
  if config.flow.width % config.flow.num_heads:
    raise ValueError(
        f"flow.width={config.flow.width} is not divisible by "
        f"flow.num_heads={config.flow.num_heads}"
    )
  if config.batch_size % jax.process_count():
    raise ValueError(
        f"batch_size={config.batch_size} must divide over "
        f"{jax.process_count()} hosts"
    )
  n = jax.device_count() if devices is None else devices
  model_axis = config.mesh.model
  if model_axis < 1 or n % model_axis:
    raise ValueError(f"mesh.model={model_axis} must divide the {n} devices")
  data_axis = config.mesh.data if config.mesh.data > 0 else n // model_axis
  if config.batch_size % data_axis:
    raise ValueError(
        f"batch_size={config.batch_size} must divide over the "
        f"mesh's data axis of {data_axis} devices"
    )
  for name, group in config.optim.groups.items():
    lr = group.lr
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
      raise ValueError(
          f"optim.groups.{name}.lr={lr} must be a finite " "number >= 0"
      )
  for name in ("total_steps", "batch_size", "log_every"):
    if config[name] < 1:
      raise ValueError(f"{name} must be >= 1, got {config[name]}")
  if config.loss.lpips_weight > 0 and config.loss.lpips_net not in (
      perceptual_lib.NETS
  ):
    raise ValueError(
        f"loss.lpips_net={config.loss.lpips_net!r}: expected "
        f"one of {perceptual_lib.NETS}"
    )
  if not 0.0 <= config.ema_decay <= 1.0:
    raise ValueError(
        f"ema_decay={config.ema_decay} must lie in [0, 1] "
        "(0.999 keeps ~1000 steps)"
    )
  if config.max_skipped_steps < 0:
    raise ValueError(
        f"max_skipped_steps={config.max_skipped_steps} must be "
        ">= 0 (0: never stop on skipped steps)"
    )
  if not config.max_update_ratio >= 0:
    raise ValueError(
        f"max_update_ratio={config.max_update_ratio} must be "
        ">= 0 (0: no bound)"
    )
  if config.loss.kl_kind not in losses.KL_KINDS:
    raise ValueError(
        f"loss.kl_kind={config.loss.kl_kind!r}: expected one of "
        f"{losses.KL_KINDS}"
    )
  if config.loss.logit_scale_kind not in losses.LOGIT_SCALE_KINDS:
    raise ValueError(
        f"loss.logit_scale_kind={config.loss.logit_scale_kind!r}:"
        f" expected one of {losses.LOGIT_SCALE_KINDS}"
    )
  if not 0.0 <= config.loss.cfg_null_prob < 1.0:
    raise ValueError("loss.cfg_null_prob must be in [0, 1)")
  if config.loss.clip_target not in losses.CLIP_TARGETS:
    raise ValueError(
        f"loss.clip_target={config.loss.clip_target!r}: "
        f"expected one of {losses.CLIP_TARGETS}"
    )
  if config.loss.hard_negatives:
    if config.objective != "crossflow":
      raise ValueError(
          "loss.hard_negatives is a term of the crossflow "
          "objective's contrastive loss; objective="
          f"{config.objective!r} has none"
      )
    if config.data.cache_text and config.text_encoder.name:
      # (Without a frozen encoder nothing is cached: cache_text is moot.)
      raise ValueError(
          "loss.hard_negatives needs the text encoder to run on "
          "the negative captions: set data.cache_text=False"
      )
  if config.loss.hard_negative_words:
    from txt2img_jax.data import negatives

    negatives.parse_word_classes(config.loss.hard_negative_words)
  elif config.loss.hard_negatives and config.data.name != "shapes":
    from txt2img_jax.data import negatives

    raise negatives.words_not_named(config.data.name)
  if config.loss.align_weight < 0:
    raise ValueError("loss.align_weight must be >= 0")
  if config.sample.method not in flow.SAMPLERS:
    raise ValueError(
        f"sample.method={config.sample.method!r}: expected one "
        f"of {flow.SAMPLERS}"
    )
  if config.flow.predict not in flow.PREDICTS:
    raise ValueError(
        f"flow.predict={config.flow.predict!r}: expected one of "
        f"{flow.PREDICTS}"
    )
  if not 0.0 < config.flow.predict_min_gap <= 1.0:
    raise ValueError("flow.predict_min_gap must be in (0, 1]")
  objectives.get(config.objective)
  _validate_outputs(config)
  options = train_compiler_options(config)
  if options:
    try:  # XLA knows its options: a trivial compile names a bad one now.
      jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"xla_cpu_options={config.xla_cpu_options!r}: "
          f"{str(e).splitlines()[0]}"
      ) from None
  return shape


def _validate_outputs(config) -> None:
  """Sampling, evaluation and checkpoint settings: used at the end of a run
  and at its evaluations, so checked before its first step."""
  from txt2img_jax.evaluation import registry

  s, e = config.sample, config.eval
  at_least = {
      "sample.num_steps": (s.num_steps, 1),
      "sample.grid_size": (s.grid_size, 1),
      "eval.num": (e.num, 1),
      "eval.batch_size": (e.batch_size, 1),
      "eval.image_num": (e.image_num, 0),
      "eval.reference_num": (e.reference_num, 1),
      "keep_checkpoints": (config.keep_checkpoints, 1),
      "max_compiles": (config.max_compiles, 1),
      "checkpoint_every": (config.checkpoint_every, 0),
      "sample_every": (config.sample_every, 0),
      "eval_every": (config.eval_every, 0),
  }
  for name, (value, low) in at_least.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"{name}={value!r} must be an integer >= {low}")
  if not math.isfinite(s.cfg_scale):
    raise ValueError(f"sample.cfg_scale={s.cfg_scale} must be finite")
  if e.fid_features:
    from txt2img_jax.evaluation import features

    if e.fid_features not in features.NETS:
      raise ValueError(
          f"eval.fid_features={e.fid_features!r}: expected one of "
          f"{sorted(features.NETS)} ('' for none)"
      )
    if e.fid_num < 2 or e.fid_image_size < 32:
      raise ValueError(
          f"eval.fid_num={e.fid_num} must be >= 2 and eval.fid_image_size="
          f"{e.fid_image_size} >= 32"
      )
    if e.fid_split not in ("train", "val"):
      raise ValueError(f"eval.fid_split={e.fid_split!r}: expected train | val")
    if e.fid_features == "inception" and not (
        e.fid_weights and paths.isfile(e.fid_weights)
    ):
      raise FileNotFoundError(
          "eval.fid_features='inception' needs eval.fid_weights, the file "
          "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's port of the "
          f"FID network); got {e.fid_weights!r}"
      )
  if e.kind and e.kind not in registry.REGISTRY:
    raise ValueError(
        f"eval.kind={e.kind!r}: expected one of {sorted(registry.REGISTRY)}"
        " ('' for the data's own)"
    )
  for name, path, isdir in (
      ("eval.prompts", e.prompts, False),
      ("eval.clip_model", e.clip_model, True),
  ):
    # A local path or a bucket URL (read through utils/paths).
    path = os.path.expanduser(path) if path else ""
    if isdir and hub.is_repo_id(path) and not paths.exists(path):
      continue  # A hub id: resolved (or refused in one line) when loaded.
    if path and not (paths.isdir(path) if isdir else paths.isfile(path)):
      raise FileNotFoundError(
          f"{name}={path!r} is not a {'folder' if isdir else 'file'}"
      )


def parse_xla_options(text: str) -> dict[str, bool | int | float | str]:
  """'name=value;name=value' -> {name: value}: every name an XLA option;
  true/false become booleans and numbers numbers, as XLA types them."""
  options = {}
  for item in filter(None, (i.strip() for i in text.split(";"))):
    name, eq, value = (part.strip() for part in item.partition("="))
    if not eq or not name.startswith("xla_") or not value:
      raise ValueError(
          f"xla_cpu_options: {item!r} is not 'xla_<name>=<value>'"
          " (items separated by ';', e.g. "
          "'xla_disable_hlo_passes=tree_reduction_rewriter')"
      )
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
  none elsewhere."""
  if jax.default_backend() != "cpu":
    return None
  return parse_xla_options(config.xla_cpu_options) or None


def use_prng_impl(config) -> None:
  """jax's default PRNG as `config.prng_impl` says: a process-wide setting,
  made before any key (a run saved before the field existed loads with
  base.py's threefry2x32, `run_config.load`)."""
  impl = config.prng_impl
  if impl not in PRNG_IMPLS:
    raise ValueError(f"prng_impl={impl!r}: expected one of {PRNG_IMPLS}")
  jax.config.update("jax_default_prng_impl", impl)
