"""PyTorch safetensors of a CLIP text model or T5 encoder -> the Flax param tree, with numpy.

Most Hugging Face checkpoints now ship only `model.safetensors` (or shards listed in
`model.safetensors.index.json`). transformers' `from_pt` converts them but imports torch; a
training host must not need torch, so the conversion is done here from the Flax model's own
parameter shapes: every Flax leaf names the PyTorch tensor it comes from.

  Flax leaf      PyTorch tensor   layout
  kernel         weight           (out, in) -> (in, out)
  embedding      weight           as is
  scale          weight           as is (LayerNorm)
  weight, bias   same             as is (T5's LayerNorm has `weight`)

Tensors the encoder does not use (a full CLIPModel's vision tower, T5's decoder, buffers such as
`position_ids`) are ignored; a missing or mis-shaped one is an error that lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import numpy as np

from txt2img_jax.utils import hub
from txt2img_jax.utils import paths

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLAX_FILE = "flax_model.msgpack"
_LEAF_TO_TORCH = {
    "kernel": "weight",
    "embedding": "weight",
    "scale": "weight",
    "weight": "weight",
    "bias": "bias",
}
# Tied input embeddings: safetensors keeps one name of a tied pair, which one depends on the
# saving class (T5EncoderModel keeps `shared.weight`, some exports `encoder.embed_tokens.weight`).
_ALIASES = {"shared.weight": ("encoder.embed_tokens.weight",)}


def remote_cache_dir() -> str:
  """Where a bucket folder of a model is copied (`model_folder`):
  $XDG_CACHE_HOME/txt2img_jax/models, by default under ~/.cache."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(cache, "txt2img_jax", "models")


def model_folder(name: str, field: str) -> str:
  """A local folder of the model `name` (config field `field`) names: a
  bucket folder (gs://...) copied once to `remote_cache_dir()` (the files
  hub.ALLOW_PATTERNS lists; transformers reads configs and tokenizers from
  local files only), else `hub.model_folder` (a local folder, or a hub id's
  snapshot in the Hugging Face cache, which is always local)."""
  if paths.is_remote(name):
    if not paths.isdir(name):
      raise FileNotFoundError(f"{field}={name!r} is not a folder")
    return paths.local_copy_tree(name, remote_cache_dir(), hub.ALLOW_PATTERNS)
  return hub.model_folder(name, field)


def has_safetensors(path: str) -> bool:
  return any(
      paths.isfile(paths.join(path, f)) for f in (WEIGHTS_FILE, INDEX_FILE)
  )


def has_flax(path: str) -> bool:
  return paths.isfile(paths.join(path, FLAX_FILE))


def weight_files(path: str) -> list[str]:
  """The safetensors files of a folder: the single file, or the shards its index lists."""
  single = paths.join(path, WEIGHTS_FILE)
  if paths.isfile(single):
    return [single]
  index = paths.join(path, INDEX_FILE)
  try:
    shards = sorted(
        set(json.loads(paths.read_text(index))["weight_map"].values())
    )
  except (OSError, ValueError, KeyError) as e:
    raise FileNotFoundError(
        f"{path!r}: cannot read {WEIGHTS_FILE} or a valid {INDEX_FILE} ({e}); the text encoder "
        f"folder needs PyTorch safetensors or {FLAX_FILE}"
    ) from None
  return [paths.join(path, s) for s in shards]


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """The tensors of a safetensors file: mapped from a local disk, read whole
  into memory from a bucket."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  if paths.is_remote(path):
    return safetensors.numpy.load(paths.read_bytes(path))
  return safetensors.numpy.load_file(path)


def _read_tensors(files: Sequence[str]) -> Dict[str, np.ndarray]:
  out = {}
  for path in files:
    try:
      out.update(read_safetensors(path))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot read {path}: {e}") from None
  return out


def _torch_name(path: Tuple[str, ...]) -> str:
  *modules, leaf = path
  # Bare parameters (CLIP's logit_scale, class_embedding) keep their name.
  return ".".join(modules + [_LEAF_TO_TORCH.get(leaf, leaf)])


def _to_flax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  if (
      leaf == "kernel" and array.ndim == 4
  ):  # conv OIHW -> HWIO (CLIP's patch embedding)
    return array.transpose(2, 3, 1, 0)
  return array.T if leaf == "kernel" else array


def _list(title: str, items: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit]) + (
      f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  )
  return f"{len(items)} {title}: {shown}"


def convert(
    shape_tree: Any, tensors: Mapping[str, np.ndarray], where: str
) -> Tuple[Dict[str, Any], str]:
  """(Flax params as float32 numpy, sha256 of every weight used) from PyTorch tensors.

  `shape_tree` is the Flax model's `params_shape_tree`; `where` names the files in errors.
  """
  flat = jax.tree_util.tree_flatten_with_path(shape_tree)[0]
  params: Dict[str, Any] = {}
  digest = hashlib.sha256()
  missing, misshaped = [], []
  for key_path, leaf in sorted(flat, key=lambda x: jax.tree_util.keystr(x[0])):
    path = tuple(str(k.key) for k in key_path)
    name = _torch_name(path)
    found = next(
        (n for n in (name,) + _ALIASES.get(name, ()) if n in tensors), None
    )
    if found is None:
      missing.append(name)
      continue
    array = _to_flax_layout(path[-1], np.asarray(tensors[found], np.float32))
    if array.shape != tuple(leaf.shape):
      misshaped.append(f"{found} {tuple(tensors[found].shape)}")
      continue
    array = np.ascontiguousarray(array)
    digest.update(name.encode())
    digest.update(array.tobytes())
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = array
  if missing or misshaped:
    problems = [
        _list(t, items)
        for t, items in (("missing", missing), ("mis-shaped", misshaped))
        if items
    ]
    raise ValueError(
        f"{where} does not match its config.json: " + "; ".join(problems)
    )
  return params, digest.hexdigest()


def load_safetensors(path: str, shape_tree: Any) -> Tuple[Dict[str, Any], str]:
  """(params, weights hash) of a folder's safetensors, for a model of `shape_tree`."""
  files = weight_files(path)
  return convert(shape_tree, _read_tensors(files), ", ".join(files))


def hash_params(params: Any) -> str:
  """sha256 over every leaf: the identity of weights loaded from Flax msgpack."""
  digest = hashlib.sha256()
  for key_path, leaf in sorted(
      jax.tree_util.tree_flatten_with_path(params)[0],
      key=lambda x: jax.tree_util.keystr(x[0]),
  ):
    # The same names and order as `convert`: one set of weights, one hash, whatever the format.
    digest.update(_torch_name(tuple(str(k.key) for k in key_path)).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()
