"""Orbax checkpoints of the whole train state, and partial loading.

A checkpoint is the train state pytree (step, params, EMA params, optimizer
state, rng, counters). The input pipeline is a pure function of the step, so
the step alone restores the input position.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Async, keep-N checkpoints under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of abstract_state."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def resolve_checkpoint(path: str) -> tuple[str, int]:
  """A workdir, its checkpoints dir or one step dir -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  candidates = [os.path.join(path, "checkpoints"), path]
  for directory in candidates:
    if not os.path.isdir(directory):
      continue
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    if steps:
      return directory, steps[-1]
  parent, leaf = os.path.split(path)
  if leaf.isdigit() and os.path.isdir(path):
    return parent, int(leaf)
  raise FileNotFoundError(
      f"no checkpoint found at {path!r}: expected a workdir with "
      "checkpoints/<step>/, a checkpoints dir, or a step dir")


def load_raw(path: str) -> tuple[dict, int]:
  """The saved state as nested dicts of host arrays, whatever its model."""
  directory, step = resolve_checkpoint(path)
  manager = ocp.CheckpointManager(directory)
  raw = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return jax.tree.map(np.asarray, raw), step


def _flatten(tree: Any) -> dict[str, Any]:
  flat = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[_path_name(keypath)] = leaf
  return flat


def _path_name(keypath) -> str:
  """'a/b/0' for the path of a leaf in nested dicts, dataclasses, lists."""
  return jax.tree_util.keystr(keypath, simple=True, separator="/")


def merge_matching(target: Any, source: Any) -> tuple[Any, dict[str, list]]:
  """Takes every leaf of `source` whose path and shape match one in `target`.

  Returns the merged tree (target's structure) and a table with the paths
  that were loaded, newly initialised (only in target or shape differs) and
  dropped (only in source).
  """
  src = _flatten(source)
  loaded, new = [], []

  def pick(keypath, leaf):
    name = _path_name(keypath)
    other = src.get(name)
    if other is not None and np.shape(other) == np.shape(leaf):
      loaded.append(name)
      return np.asarray(other, dtype=np.asarray(leaf).dtype)
    new.append(name if other is None else
               f"{name} (shape {np.shape(other)} -> {np.shape(leaf)})")
    return leaf

  merged = jax.tree_util.tree_map_with_path(pick, target)
  target_names = set(_flatten(target))
  dropped = sorted(n for n in src if n not in target_names)
  return merged, {"loaded": loaded, "new": new, "dropped": dropped}


def format_merge_table(table: dict[str, list], max_rows: int = 40) -> str:
  lines = [f"loaded {len(table['loaded'])}, new {len(table['new'])}, "
           f"dropped {len(table['dropped'])} parameters"]
  for kind in ("new", "dropped"):
    for name in table[kind][:max_rows]:
      lines.append(f"  {kind:8s} {name}")
    if len(table[kind]) > max_rows:
      lines.append(f"  ... {len(table[kind]) - max_rows} more {kind}")
  return "\n".join(lines)


def log_merge_table(table: dict[str, list]) -> None:
  for line in format_merge_table(table).splitlines():
    logging.info("%s", line)
