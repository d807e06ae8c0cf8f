"""Device mesh, logical-axis rules and the shardings of state and batches.

Model code names logical axes only ('embed', 'mlp', 'heads', ...). The config
maps them to mesh axes, so the same model runs data-parallel on 8 GPUs or
FSDP/tensor-parallel on a pod by changing two config lines.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over all devices; -1 means "the rest"."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or n % model:
    raise ValueError(f"mesh.model={model} must divide the {n} devices")
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(
        f"mesh data={data} x model={model} != {n} devices; use data=-1")
  # Consistent device order matters: every host must build the same mesh.
  grid = np.array(sorted(devices, key=lambda d: (d.process_index, d.id)))
  return Mesh(grid.reshape(data, model), MESH_AXES)


def logical_rules(config_rules: Sequence[Sequence[Any]]) -> tuple:
  """Config rules are lists [logical, mesh_axis_or_None]; flax wants tuples."""
  return tuple((str(k), v) for k, v in config_rules)


def state_shardings(abstract_boxed: Any, mesh: Mesh, rules: tuple) -> Any:
  """NamedShardings for a pytree whose leaves may carry logical names.

  Leaves without names (plain arrays, optimizer counters) are replicated.
  """
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; the rest replicated."""
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's slice of the global batch -> global arrays on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}
