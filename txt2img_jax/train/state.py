"""The train state and its sharded creation: shapes first
(`jax.eval_shape`), then each array created where the mesh puts it; the
jitted step with explicit shardings and the state donated."""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import layers
from txt2img_jax.train import optim
from txt2img_jax.train import sharding


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  nonfinite: (
      jax.Array
  )  # Steps skipped because loss or gradients were not finite.


def init_variables(model, config, latent_shape, text_width, rng):
  """Boxed (logically named) params from dummy inputs; use under eval_shape."""
  b, length = 2, config.data.max_len
  ids = jnp.zeros((b, length), jnp.int32)
  mask = jnp.ones((b, length), jnp.int32)
  tokens = jnp.zeros((b, length, text_width), jnp.float32)
  x1 = jnp.zeros((b,) + tuple(latent_shape), jnp.float32)
  return model.init(
      rng, ids, mask, tokens, x1, jnp.zeros((b,)), jnp.ones((b,), jnp.int32)
  )["params"]


def init_keys(config) -> tuple[jax.Array, jax.Array]:
  """(the key of a run's initial parameters, its training randomness')."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  return init_rng, state_rng


def train_state_spec(config, model, latent_shape, text_width, mesh, rules):
  """(tx, schedules, init_state, init_rng, abstract_state, state_shardings):
  everything about the state but its arrays. `init_state(init_rng)` makes
  them; ahead-of-time compilation (train/aot_lower.py) uses the shapes
  alone."""
  init_rng, state_rng = init_keys(config)
  init_params = functools.partial(
      init_variables, model, config, latent_shape, text_width
  )
  boxed = jax.eval_shape(init_params, init_rng)
  tx, schedules = optim.make_optimizer(config, nn.unbox(boxed))

  def init_state(key):
    params = nn.unbox(init_params(key))
    return TrainState(
        step=jnp.int32(0),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        rng=state_rng,
        nonfinite=jnp.int32(0),
    )

  abstract_state = jax.eval_shape(init_state, init_rng)
  state_shardings = sharding.train_state_shardings(
      abstract_state, boxed, mesh, rules
  )
  return tx, schedules, init_state, init_rng, abstract_state, state_shardings


def create_train_state(config, model, latent_shape, text_width, mesh, rules):
  """(tx, schedules, state, state_shardings), the state created sharded."""
  tx, schedules, init_state, init_rng, _, state_shardings = train_state_spec(
      config, model, latent_shape, text_width, mesh, rules
  )
  with mesh:
    state = jax.jit(init_state, out_shardings=state_shardings)(init_rng)
  return tx, schedules, state, state_shardings


def jit_train_step(
    train_step,
    state_shardings,
    mesh,
    compiler_options: dict | None = None,
    rules=None,
):
  """Explicit in/out shardings; the state is donated (updated in place).
  compiler_options: XLA options for this step (`train_compiler_options`).
  rules: the logical-axis rules (`sharding.logical_rules`), in force while
  the step is traced: the model's activation constraints (`layers.constrain`)
  then keep the batch split over 'data' between blocks."""
  repl = sharding.replicated(mesh)
  batch = sharding.batch_sharding(mesh)
  if rules is not None:
    inner = train_step

    @functools.wraps(inner)
    def train_step(*args):
      with layers.activation_sharding(mesh, rules):
        return inner(*args)

  return jax.jit(
      train_step,
      donate_argnums=(0,),
      in_shardings=(state_shardings, batch, repl, repl),
      out_shardings=(state_shardings, repl),
      compiler_options=compiler_options,
  )
