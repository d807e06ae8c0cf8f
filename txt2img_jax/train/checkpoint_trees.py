"""Train-state trees compared and merged by path: what differs between a
checkpoint and a model (`structure_difference`), and the leaves of a saved
tree taken into another model's where path and shape match
(`merge_matching`, for `init_from`).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import numpy as np


def structure_difference(want: Any, saved: Any) -> str | None:
  """None when two trees (arrays, abstract arrays, orbax metadata or
  `shapes_by_path` dicts) hold the same paths and shapes, else what
  differs, in a few words."""
  want = want if _is_shape_dict(want) else shapes_by_path(want)
  saved = saved if _is_shape_dict(saved) else shapes_by_path(saved)
  if saved == want:
    return None
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  reshaped = sorted(k for k in set(want) & set(saved) if want[k] != saved[k])
  detail = "; ".join(
      f"{name}: {', '.join(keys[:3])}"
      + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")
      for name, keys in (
          ("not in the checkpoint", missing),
          ("only in the checkpoint", extra),
          ("other shape", reshaped),
      )
      if keys
  )
  if any(k.endswith("rng") for k in reshaped):
    detail += " - the random key's shape: another prng_impl"
  return detail


def _is_shape_dict(tree: Any) -> bool:
  return isinstance(tree, dict) and all(
      isinstance(v, tuple) for v in tree.values()
  )


def shapes_by_path(tree: Any) -> dict[str, tuple]:
  """{'params/flow/...': shape} for a state, its abstract form or orbax's
  metadata of it (dataclass fields and dict keys named alike)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        for k in path
    ]
    out["/".join(names)] = tuple(getattr(leaf, "shape", ()) or ())
  return out


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
    new.append(
        name
        if other is None
        else f"{name} (shape {np.shape(other)} -> {np.shape(leaf)})"
    )
    return leaf

  merged = jax.tree_util.tree_map_with_path(pick, target)
  target_names = set(_flatten(target))
  dropped = sorted(n for n in src if n not in target_names)
  return merged, {"loaded": loaded, "new": new, "dropped": dropped}


def format_merge_table(table: dict[str, list], max_rows: int = 40) -> str:
  lines = [
      f"loaded {len(table['loaded'])}, new {len(table['new'])}, "
      f"dropped {len(table['dropped'])} parameters"
  ]
  for kind in ("new", "dropped"):
    for name in table[kind][:max_rows]:
      lines.append(f"  {kind:8s} {name}")
    if len(table[kind]) > max_rows:
      lines.append(f"  ... {len(table[kind]) - max_rows} more {kind}")
  return "\n".join(lines)


def log_merge_table(table: dict[str, list]) -> None:
  for line in format_merge_table(table).splitlines():
    logging.info("%s", line)
