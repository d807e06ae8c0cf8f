"""The train step of a config built from shapes alone and lowered for
devices this host may not have (train/aot.py compiles it).

The parts of a run (model, text side, latent space) come from configs, the
train state and batch are abstract arrays with their shardings: the same
code training runs (`run.build_model`, `state.train_state_spec`,
`step.for_parts`, `state.jit_train_step`), with no weights read.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import latents
from txt2img_jax.train import sharding, text_side, validate
from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import step as step_lib


def abstract_text(config, vocab_size: int) -> text_side.TextSide:
  """The text side without weights or tokenizer files: a frozen encoder from
  its config.json; an embedded one with `vocab_size` words (the shapes
  vocabulary's size for shapes runs)."""
  from txt2img_jax.models import text_encoder as text_encoder_lib

  name = config.text_encoder.name
  if not name:
    if config.data.name == "shapes":
      vocab_size = len(text_side.vocabulary(config, None))
    return text_side.TextSide(
        None, vocab_size, config.text_encoder.width, None, {}
    )
  enc = text_encoder_lib.describe_pretrained_text_encoder(
      name, dtype=np.dtype(config.dtype)
  )
  # The vocabulary size only sizes an embedded encoder's table.
  return text_side.TextSide(None, vocab_size, enc.width, enc, enc.params)


def abstract_parts(config, devices: int, vocab_size: int) -> run_lib.Parts:
  validate.use_prng_impl(config)
  latent_shape = validate.validate_config(config, devices=devices)
  text = abstract_text(config, vocab_size)
  autoencoder = latents.describe(config)
  model = run_lib.build_model(
      config, latent_shape, text.vocab_size, text.frozen is None
  )
  return run_lib.Parts(config, latent_shape, text, autoencoder, model)


def batch_shapes(config, parts: run_lib.Parts) -> dict[str, tuple]:
  """name -> (shape, dtype) of one global batch, as the input pipeline
  hands it to the step (data/pipeline.py; tests/test_aot.py checks the two
  agree on a shapes run)."""
  b, s, length = config.batch_size, config.data.image_size, config.data.max_len
  out = {
      "image": ((b, s, s, 3), np.float32),
      "ids": ((b, length), np.int32),
      "mask": ((b, length), np.int32),
  }
  if config.loss.hard_negatives:
    out["neg_ids"] = out["neg_mask"] = ((b, length), np.int32)
  if config.autoencoder.kind == "kl_vae" and config.data.cache_latents:
    moments = ((b,) + tuple(parts.latent_shape), np.float32)
    out["moments_mean"] = out["moments_logvar"] = moments
  if parts.text.frozen is not None and config.data.cache_text:
    out["text_tokens"] = (
        (b, length, parts.text.width),
        np.dtype(config.data.text_cache_dtype),
    )
  return out


def _shaped(tree, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      tree,
      shardings,
  )


def _abstract(tree, sharding_):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(
          np.shape(a), jnp.result_type(a), sharding=sharding_
      ),
      tree,
  )


def lower_train_step(config, devices, vocab_size: int = 32000):
  """(lowered step, parts, mesh, {"state", "frozen": bytes}): the train step
  of `config` over `devices`."""
  parts = abstract_parts(config, len(devices), vocab_size)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model, devices)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  tx, schedules, _, _, abstract_state, state_shardings = (
      state_lib.train_state_spec(
          config,
          parts.model,
          parts.latent_shape,
          parts.text.width,
          mesh,
          rules,
      )
  )
  # No XLA options: config.xla_cpu_options are for a CPU backend.
  step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules),
      state_shardings,
      mesh,
      rules=rules,
  )
  repl = sharding.replicated(mesh)
  batch = {
      k: jax.ShapeDtypeStruct(
          shape, dtype, sharding=sharding.batch_sharding(mesh)
      )
      for k, (shape, dtype) in batch_shapes(config, parts).items()
  }
  c = parts.latent_shape[-1]
  stats = ae_lib.LatentStats(
      shift=jax.ShapeDtypeStruct((c,), jnp.float32, sharding=repl),
      scale=jax.ShapeDtypeStruct((c,), jnp.float32, sharding=repl),
  )
  frozen = _abstract(parts.frozen, repl)
  with mesh:
    lowered = step.lower(
        _shaped(abstract_state, state_shardings), batch, frozen, stats
    )
  sizes = {"state": nbytes(abstract_state), "frozen": nbytes(frozen)}
  return lowered, parts, mesh, sizes


def nbytes(tree) -> int:
  """Bytes of a pytree of arrays or shapes, whole (not per device)."""
  return sum(
      math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
      for a in jax.tree.leaves(tree)
  )
