"""Converting DiT parameter trees between the unrolled and the scanned layout.

`models/dit.py`'s DiT keeps its blocks either unrolled (`block_0 .. block_N`)
or, with scan=True, stacked on a leading 'layers' axis under `blocks/`.
`stack_block_params` / `unstack_block_params` turn parameter trees (or whole
train states) from one layout into the other, so a checkpoint restores under
either setting.
"""

import re

import jax
import numpy as np

_BLOCK = re.compile(r"block_(\d+)$")


def _is_dit(tree) -> bool:
  # Not the output layer's name: it differs by `out_head` ("final",
  # "final_overlap", "final_conv"); the final modulation is always there.
  return (
      isinstance(tree, dict)
      and "patch_embed" in tree
      and "final_modulation" in tree
  )


def _map_dits(fn, tree):
  """Applies fn to every DiT parameter dict inside nested dicts/lists/tuples
  (a params tree, an optimizer state that mirrors it, or a whole restored
  train state as nested dicts)."""
  if _is_dit(tree):
    return fn(tree)
  if isinstance(tree, dict):
    return {k: _map_dits(fn, v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
    return type(tree)(_map_dits(fn, v) for v in tree)
  if hasattr(tree, "_fields"):  # NamedTuple optimizer states.
    return type(tree)(*(_map_dits(fn, v) for v in tree))
  return tree


def _stack_one(dit: dict) -> dict:
  indices = sorted(
      int(_BLOCK.match(k).group(1)) for k in dit if _BLOCK.match(k)
  )
  if not indices:
    return dit
  if "blocks" in dit:
    raise ValueError(
        "DiT params hold both block_<i> and blocks; cannot stack them"
    )
  if indices != list(range(len(indices))):
    raise ValueError(
        f"DiT block indices {indices} are not 0..{len(indices) - 1}"
    )
  out = {k: v for k, v in dit.items() if not _BLOCK.match(k)}
  out["blocks"] = jax.tree.map(
      lambda *xs: np.stack([np.asarray(x) for x in xs]),
      *[dit[f"block_{i}"] for i in indices],
  )
  return out


def _unstack_one(dit: dict) -> dict:
  if "blocks" not in dit:
    return dit
  leaves = jax.tree.leaves(dit["blocks"])
  depth = int(np.shape(leaves[0])[0]) if leaves else 0
  out = {k: v for k, v in dit.items() if k != "blocks"}
  for i in range(depth):
    out[f"block_{i}"] = jax.tree.map(
        lambda x, i=i: np.asarray(x)[i], dit["blocks"]
    )
  return out


def stack_block_params(tree):
  """Unrolled -> scanned layout: in every DiT param dict within `tree`,
  `block_0 .. block_N-1` become one `blocks` subtree whose leaves are stacked
  on a new leading axis (N, ...). Pure: returns a new tree (host numpy leaves
  for the stacked part); trees already scanned pass through unchanged."""
  return _map_dits(_stack_one, tree)


def unstack_block_params(tree):
  """Scanned -> unrolled layout: the inverse of `stack_block_params`."""
  return _map_dits(_unstack_one, tree)
