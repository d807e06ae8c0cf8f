"""A PyTorch state dict (`torch.save`) read with numpy alone: no torch.

Both file layouts torch writes are read: the zip archive (torch >= 1.6:
`data.pkl` plus one file per storage) and the older single stream (a pickle
header, the pickled dict, the storage keys, then each storage's bytes). The
pickle is read by an unpickler that knows only the few names a state dict
of tensors uses, so nothing else in the file can run.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from txt2img_jax.utils import paths

_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:

  def __init__(self, name: str):
    self.name = name
    self.dtype = _DTYPES[name]

  @property
  def itemsize(self) -> int:
    return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
  """One storage; its bytes come from the archive (now) or the stream
  (after the pickle, in the legacy layout)."""

  def __init__(self, kind: _StorageType):
    self.kind = kind
    self.array: np.ndarray | None = None

  def fill(self, raw: bytes) -> None:
    if self.kind.dtype == "bfloat16":
      bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
      self.array = bits.view(np.float32)
    else:
      self.array = np.frombuffer(raw, self.kind.dtype)


class _Tensor:

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)

  def numpy(self) -> np.ndarray:
    flat = self.storage.array
    if flat is None:
      raise ValueError("a tensor's storage was never read")
    if not self.size:
      return np.array(flat[self.offset])
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset :],
        shape=self.size,
        strides=[s * item for s in self.stride],
    )
    return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata.
  return _Tensor(storage, offset, size, stride)


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  return func(*args)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks, unused
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): object,
    ("torch.nn.parameter", "Parameter"): object,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, storage_for):
    super().__init__(f)
    self._storage_for = storage_for

  def find_class(self, module, name):
    if module == "torch" and name in _DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(
        f"{module}.{name} is not part of a state dict of tensors"
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    kind, key = pid[1], str(pid[2])
    if isinstance(kind, str):  # Some writers store the name itself.
      kind = _StorageType(kind)
    return self._storage_for(key, kind)


def _tensors(obj):
  if isinstance(obj, _Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return {k: _tensors(v) for k, v in obj.items()}
  return obj


def _flat(tree, prefix="") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _read_zip(path: str, f) -> dict:
  with zipfile.ZipFile(f) as z:
    names = z.namelist()
    pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
    prefix = pkl[: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in names and z.read(order).decode().strip() != "little":
      raise ValueError(f"{path}: big-endian tensors are not supported")
    storages = {}

    def storage_for(key, kind):
      if key not in storages:
        s = _Storage(kind)
        s.fill(z.read(f"{prefix}data/{key}"))
        storages[key] = s
      return storages[key]

    return _Unpickler(io.BytesIO(z.read(pkl)), storage_for).load()


def _read_legacy(path: str, f) -> dict:
  safe = lambda: _Unpickler(f, None).load()
  if safe() != _LEGACY_MAGIC:
    raise ValueError(f"{path} is not a PyTorch file")
  safe()  # Protocol version.
  safe()  # System info (byte order, type sizes).
  storages = {}

  def storage_for(key, kind):
    return storages.setdefault(key, _Storage(kind))

  result = _Unpickler(f, storage_for).load()
  keys = _Unpickler(f, None).load()
  for key in keys:
    s = storages[str(key)]
    (numel,) = struct.unpack("<q", f.read(8))
    s.fill(f.read(numel * s.kind.itemsize))
  return result


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a state dict saved with torch.save (nested dicts
  joined with '.'); a `state_dict` entry of a checkpoint is taken. `path`
  is a local file or a bucket URL (read whole into memory)."""
  try:
    with io.BytesIO(paths.read_bytes(path)) as f:
      is_zip = zipfile.is_zipfile(f)
      f.seek(0)
      tree = _read_zip(path, f) if is_zip else _read_legacy(path, f)
  except (pickle.UnpicklingError, EOFError, KeyError, StopIteration) as e:
    raise ValueError(f"{path}: not a readable PyTorch state dict ({e})") from e
  if isinstance(tree, dict) and isinstance(tree.get("state_dict"), dict):
    tree = tree["state_dict"]
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: holds a {type(tree).__name__}, not a dict")
  return _flat(_tensors(tree))
