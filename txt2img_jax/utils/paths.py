"""The one path layer: every file the project reads or writes goes through here.

A path is a local path (`~/runs/x`, relative or absolute) or a bucket URL
(`gs://bucket/run`; also `s3://`, `az://`), the schemes `etils.epath` takes:
the same layer orbax and TFDS use, which reaches `gs://` through TensorFlow's
`tf.io.gfile` (or fsspec). Functions are named after the `os` calls they
replace, take and return strings, and behave the same on both kinds, with
what a bucket cannot do said where it matters:

- a bucket has no append: `append_text` rewrites the object (metrics files
  are small; on a local disk it appends);
- a bucket write is whole or nothing, so `write_*` only go through a
  temporary name on a local disk, where a kill could tear the file;
- a bucket has no `flock` (see `utils/runlock.py` for the lease it uses).

Libraries that open paths in their own C++ code (TensorStore under orbax,
TensorFlow's event writer) are handed `native(path)`, the one seam through
which a path leaves this layer. Readers that only take local files
(ArrayRecord) read a local copy from `local_copy`.

Nothing outside this module should call `open`, `os.path`, `os.*` file
functions, `glob` or `shutil` on a run's or a data set's files:
`tests/test_remote_paths.py` runs the whole path on an emulated bucket and
fails naming any call that reaches the local disk with a `gs:` path.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import io
import os
import posixpath
import shutil
from typing import IO, Any, Iterator

from etils import epath

REMOTE_SCHEMES = ("gs://", "s3://", "az://")


def is_remote(path: Any) -> bool:
  """A bucket URL (gs://, s3://, az://), not a local path."""
  return str(path).startswith(REMOTE_SCHEMES)


def _check_scheme(path: str) -> None:
  if "://" in path and not is_remote(path):
    scheme = path.split("://", 1)[0]
    raise ValueError(
        f"{path}: the {scheme}:// scheme is not a file system this project "
        f"reads; use a local path or one of {', '.join(REMOTE_SCHEMES)}"
    )


def abspath(path: Any) -> str:
  """A local path made absolute (and `~` expanded); a URL unchanged, less a
  trailing slash."""
  path = os.fspath(path)
  _check_scheme(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}" if rest else path
  return os.path.abspath(os.path.expanduser(path))


def as_path(path: Any) -> epath.Path:
  """The epath.Path of `path` (for code that wants pathlib's API)."""
  return epath.Path(abspath(path))


def join(path: Any, *parts: str) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return posixpath.join(path, *parts)
  return os.path.join(path, *parts)


def dirname(path: Any) -> str:
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.rstrip("/").split("://", 1)
    head = posixpath.dirname(rest)
    return f"{scheme}://{head}" if head else f"{scheme}://{rest}"
  return os.path.dirname(path)


def basename(path: Any) -> str:
  path = os.fspath(path)
  if is_remote(path):
    return posixpath.basename(path.rstrip("/"))
  return os.path.basename(path)


def exists(path: Any) -> bool:
  return as_path(path).exists()


def isdir(path: Any) -> bool:
  return as_path(path).is_dir()


def isfile(path: Any) -> bool:
  p = as_path(path)
  return p.exists() and not p.is_dir()


def getsize(path: Any) -> int:
  return as_path(path).stat().length


def getmtime(path: Any) -> float:
  return as_path(path).stat().mtime


def makedirs(path: Any) -> None:
  """Like `os.makedirs(path, exist_ok=True)` (a bucket's folders need none,
  but its emulations and mounted buckets do)."""
  as_path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: Any) -> list[str]:
  """The names in a folder (not paths), as os.listdir."""
  return sorted(p.name for p in as_path(path).iterdir())


def glob(pattern: Any) -> list[str]:
  """The paths matching a pattern (`*`, `?`, `[...]` in any part), sorted."""
  pattern = abspath(pattern)
  parts = pattern.split("/")
  # The first part with a wildcard; what comes before it is a plain folder.
  fixed = next(
      (i for i, part in enumerate(parts) if any(c in part for c in "*?[")),
      len(parts),
  )
  if fixed == len(parts):
    return [pattern] if exists(pattern) else []
  root = "/".join(parts[:fixed]) or "/"
  if not isdir(root):
    return []
  return sorted(str(p) for p in as_path(root).glob("/".join(parts[fixed:])))


def remove(path: Any) -> None:
  as_path(path).unlink()


def rmtree(path: Any) -> None:
  p = as_path(path)
  if p.exists():
    p.rmtree()


def replace(src: Any, dst: Any) -> None:
  """Renames a file over `dst` (atomic on a local disk; on a bucket a copy
  and a delete, so readers see the old or the new object)."""
  s, d = as_path(src), as_path(dst)
  if is_remote(s) != is_remote(d):
    copy(s, d)
    s.unlink()
  else:
    s.replace(d)


def rename(src: Any, dst: Any) -> None:
  """Moves a file or folder (a folder on a bucket: each object copied)."""
  s, d = as_path(src), as_path(dst)
  if is_remote(s) and s.is_dir():
    for root, _, files in s.walk():
      root = epath.Path(root)
      for name in files:
        target = d / root.relative_to(s) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (root / name).copy(target, overwrite=True)
    s.rmtree()
  else:
    s.rename(d)


def copy(src: Any, dst: Any) -> None:
  """Copies a file, between any two of local paths and bucket URLs."""
  s, d = as_path(src), as_path(dst)
  if is_remote(s) == is_remote(d):
    s.copy(d, overwrite=True)
    return
  # epath copies with the source's backend, which cannot write the other
  # kind: stream it through both backends' file objects.
  if not is_remote(d):
    d.parent.mkdir(parents=True, exist_ok=True)
  try:
    with s.open("rb") as fin, d.open("wb") as fout:
      shutil.copyfileobj(fin, fout, 1 << 24)
  except BaseException:
    # A bucket client may commit what it had when closed on an error: no
    # half-written copy keeps the destination's name.
    with contextlib.suppress(OSError):
      d.unlink()
    raise


@contextlib.contextmanager
def open(path: Any, mode: str = "r") -> Iterator[IO[Any]]:  # pylint: disable=redefined-builtin
  """A file object (binary modes 'rb'/'wb', text 'r'/'w'); no append."""
  if "a" in mode or "+" in mode:
    raise ValueError(
        f"paths.open({mode!r}): use append_text; a bucket has none"
    )
  with as_path(path).open(mode) as f:
    yield f


def read_bytes(path: Any) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: Any) -> str:
  return as_path(path).read_text()


def write_bytes(path: Any, data: bytes) -> None:
  """Written whole or not at all: on a local disk through a temporary name
  renamed over it; a bucket object is replaced whole by one upload."""
  p = as_path(path)
  if is_remote(p):
    p.write_bytes(data)
    return
  tmp = f"{p}.tmp{os.getpid()}"
  with builtins.open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text(path: Any, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path: Any, text: str) -> None:
  """Adds `text` at the end of a file (creating it). On a bucket the object
  is read and written again: fine for the small files the project appends
  to (metrics, histories), not for data."""
  p = as_path(path)
  if is_remote(p):
    old = p.read_bytes() if p.exists() else b""
    p.write_bytes(old + text.encode("utf-8"))
    return
  with builtins.open(p, "a") as f:
    f.write(text)


def native(path: Any) -> str:
  """The path string handed to a library that does its own I/O in C++
  (TensorStore under orbax, TensorFlow's summary writer). The bucket
  emulation of the tests maps it onto its local folder."""
  return _native_hook(abspath(path))


def _identity(path: str) -> str:
  return path


_native_hook = _identity


def set_native_hook(hook) -> Any:
  """Replaces how `native` maps a URL (tests' bucket emulation); returns the
  previous hook."""
  global _native_hook
  previous, _native_hook = _native_hook, hook or _identity
  return previous


def local_copy(path: Any, cache_dir: Any) -> str:
  """A local path with `path`'s content: the path itself when local, else a
  copy under `cache_dir` (made once; kept while its size matches)."""
  path = abspath(path)
  if not is_remote(path):
    return path
  local = _cached(path, cache_dir)
  if os.path.isfile(local) and os.path.getsize(local) == getsize(path):
    return local
  tmp = f"{local}.tmp{os.getpid()}"
  copy(path, tmp)
  os.replace(tmp, local)
  return local


def _cached(url: str, cache_dir: Any) -> str:
  """Where a URL's copy lives under `cache_dir`: <cache>/<scheme>/<key>."""
  scheme, rest = url.split("://", 1)
  return os.path.join(abspath(cache_dir), scheme, rest)


def write_with(path: Any, save, *args, **kwargs) -> None:
  """Writes what `save(file_object, *args, **kwargs)` writes to a file
  object (PIL's `Image.save`, matplotlib's `savefig`, `np.savez`): made in
  memory, then written whole by `write_bytes`. Name the format in `kwargs`
  where the writer takes it from a file name (`format="PNG"`)."""
  buf = io.BytesIO()
  save(buf, *args, **kwargs)
  write_bytes(path, buf.getvalue())


def local_copy_tree(
    path: Any, cache_dir: Any, patterns: tuple[str, ...] = ()
) -> str:
  """A local folder with the files under folder `path` (those whose name
  matches one of `patterns`, all if none): the folder itself when local,
  else copies under `cache_dir` by `local_copy` (each made once, kept while
  its size matches; files gone from the bucket are not removed). For
  libraries that read a folder from local files only (transformers)."""
  path = abspath(path)
  if not is_remote(path):
    return path
  root = as_path(path)
  for folder, _, names in root.walk():
    for name in names:
      if not patterns or any(fnmatch.fnmatch(name, p) for p in patterns):
        local_copy(str(epath.Path(folder) / name), cache_dir)
  return _cached(path, cache_dir)


def size_mtime_ns(path: Any) -> tuple[int, int]:
  """(size in bytes, modification time in ns) from one stat: a local file's
  exact `os.stat`; a bucket object's time to the second (what epath gives),
  which tells a re-uploaded object from the old one."""
  path = abspath(path)
  if not is_remote(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
  st = as_path(path).stat()
  return int(st.length), int(st.mtime) * 1_000_000_000
