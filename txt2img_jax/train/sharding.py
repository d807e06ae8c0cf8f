"""Device mesh, logical-axis rules and the shardings of state and batches.

Model code names logical axes only ('embed', 'mlp', 'heads', ...). The config
maps them to mesh axes, so the same model runs data-parallel on 8 GPUs or
FSDP/tensor-parallel on a pod by changing two config lines.

Presets (`config.mesh.preset`) change what the rules alone cannot:
  ''      the rules as written (replicated params by default);
  'fsdp'  additionally splits every parameter, and so its EMA and Adam
          moments, over the 'data' axis along its largest dimension that the
          axis divides (ZeRO-3 style: each device keeps ~1/n of the state; XLA
          gathers a layer's weights when it needs them).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")
PRESETS = ("", "fsdp")


class Rules(tuple):
  """Logical-axis rules (a tuple of (logical, mesh axis) pairs, what flax
  takes) that also carry the mesh preset."""

  preset: str = ""


def _devices_phrase(n: int) -> str:
  hosts = jax.process_count()
  if hosts == 1:
    return f"{n} devices"
  return f"{n} devices ({hosts} hosts x {n // hosts})"


def make_mesh(
    data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A (data, model) mesh over all devices; -1 means "the rest"."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(
        f"mesh.model={model} must divide the " f"{_devices_phrase(n)}"
    )
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(
        f"mesh.data={data} x mesh.model={model} does not fit the "
        f"{_devices_phrase(n)}; use --config.mesh.data=-1 (all the rest)"
    )
  local = jax.local_device_count()
  if jax.process_count() > 1 and local % model:
    # Each host feeds its own rows of the batch: a 'model' group that spans
    # hosts would need the same rows on several hosts.
    raise ValueError(
        f"mesh.model={model} must divide the {local} devices "
        "of each host (a model group cannot span hosts)"
    )
  # Consistent device order matters: every host must build the same mesh.
  grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id)))
  return Mesh(grid.reshape(data, model), MESH_AXES)


def logical_rules(
    config_rules: Sequence[Sequence[Any]], preset: str = ""
) -> Rules:
  """Config rules are lists [logical, mesh_axis_or_None]; flax wants tuples."""
  if preset not in PRESETS:
    raise ValueError(f"mesh.preset={preset!r}: expected one of {PRESETS}")
  pairs = [(str(k), v) for k, v in config_rules]
  if preset == "fsdp":
    pairs.append((_FSDP_NAME, "data"))
  rules = Rules(pairs)
  rules.preset = preset
  return rules


def state_shardings(abstract_boxed: Any, mesh: Mesh, rules: tuple) -> Any:
  """NamedShardings for a pytree whose leaves may carry logical names.

  Leaves without names (plain arrays, optimizer counters) are replicated,
  unless the 'fsdp' preset splits them.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  if getattr(rules, "preset", "") == "fsdp":
    shapes = nn.unbox(abstract_boxed)
    specs = jax.tree.map(
        lambda spec, leaf: _fsdp_spec(
            spec, leaf.shape, rules, mesh.shape["data"]
        ),
        specs,
        shapes,
        is_leaf=lambda x: isinstance(x, P),
    )
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def train_state_shardings(
    abstract_state: Any, abstract_boxed: Any, mesh: Mesh, rules: tuple
) -> Any:
  """The train state's shardings: params and EMA as the logical rules say
  (`state_shardings` of the boxed params); optimizer moments like the
  parameter they belong to (matched by path suffix and shape); the rest
  replicated. Returns a state of the same type holding shardings."""
  param_shardings = state_shardings(abstract_boxed, mesh, rules)
  flat = jax.tree_util.tree_flatten_with_path
  by_path = {jax.tree_util.keystr(p): s for p, s in flat(param_shardings)[0]}
  param_shapes = {
      jax.tree_util.keystr(p): l.shape
      for p, l in flat(abstract_state.params)[0]
  }
  repl = replicated(mesh)

  def like_param(path, leaf):
    for i in range(len(path)):
      key = jax.tree_util.keystr(path[i:])
      if key in by_path and param_shapes[key] == leaf.shape:
        return by_path[key]
    return repl

  return abstract_state.replace(
      step=repl,
      params=param_shardings,
      ema_params=param_shardings,
      opt_state=jax.tree_util.tree_map_with_path(
          like_param, abstract_state.opt_state
      ),
      rng=repl,
      nonfinite=repl,
  )


def _fsdp_spec(spec: P, shape: tuple, rules: tuple, n: int) -> P:
  """`spec` (logical names) with its largest dimension that `n` divides,
  and that the rules leave unsplit, split over 'data'.

  'data' is given as a logical name that maps to itself, so the rules pass
  it through. A leaf already split over 'data' by the rules is kept.
  """
  mapping = dict(rules)
  names = list(spec) + [None] * (len(shape) - len(spec))
  mesh_axes = [mapping.get(a) if isinstance(a, str) else a for a in names]
  if n <= 1 or "data" in mesh_axes:
    return spec
  free = [
      i
      for i, (size, axis) in enumerate(zip(shape, mesh_axes))
      if axis is None and size % n == 0
  ]
  if not free:
    return spec  # Small leaves (biases of odd sizes) stay replicated.
  i = max(free, key=lambda j: shape[j])
  names[i] = _FSDP_NAME
  return P(*names)


# A logical name no model uses, mapped to the 'data' mesh axis.
_FSDP_NAME = "_fsdp"


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; the rest replicated."""
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's slice of the global batch -> global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, v)
      for k, v in batch.items()
  }
