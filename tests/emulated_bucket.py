"""An emulated bucket: `gs://` URLs that live in a local folder, for tests.

`etils.epath` (the layer `txt2img_jax.utils.paths` stands on, and the one
orbax and TFDS use) reaches `gs://` through a backend object. Here that
backend is one that maps `gs://<bucket>/<key>` onto `<root>/<bucket>/<key>`
and behaves as a bucket does where it differs from a disk: no append, no
read-write modes. Libraries that do their own I/O in C++ get the mapped path
through `paths.native`'s hook.

While it is active, a Python audit hook records every file operation that
reaches the local disk with a `gs:` path: what a call site that went around
the path layer (`open`, `os.*`, `glob`, `shutil`) does with a URL. Through
the layer, nothing local ever carries one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator
from unittest import mock

from etils.epath import backend as backend_lib
from etils.epath import gpath

from txt2img_jax.utils import paths

_PREFIX = "gs://"

# Audit events whose first argument is a path (open, os.*, shutil, glob).
_PATH_EVENTS = frozenset(
    {
        "open",
        "os.mkdir",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.listdir",
        "os.scandir",
        "os.chmod",
        "os.utime",
        "os.truncate",
        "os.symlink",
        "os.link",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.rmtree",
        "shutil.move",
        "glob.glob",
        "glob.glob/2",
    }
)

_active: list["EmulatedBucket"] = []


def _audit(event: str, args: tuple) -> None:
  if not _active or event not in _PATH_EVENTS or not args:
    return
  for arg in args[:2]:
    text = (
        os.fsdecode(arg) if isinstance(arg, (str, bytes, os.PathLike)) else ""
    )
    if "gs:" in text:
      _active[-1].bypasses.append(f"{event}({text!r})")


sys.addaudithook(_audit)


class _BucketBackend(backend_lib._OsPathBackend):  # pylint: disable=protected-access
  """The os backend on `<root>/<bucket>/<key>`, with a bucket's limits."""

  def __init__(self, root: str):
    self.root = root

  def local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(_PREFIX):
      return os.path.join(self.root, path[len(_PREFIX) :])
    return path

  def url(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(self.root + os.sep):
      return _PREFIX + path[len(self.root) + 1 :]
    return path

  def open(self, path, mode):
    if "a" in mode or "+" in mode:
      raise OSError(f"{path}: a bucket object cannot be opened with {mode!r}")
    if "w" in mode:  # A bucket has no folders to create first.
      os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return super().open(self.local(path), mode)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.url(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(
        self.local(top), top_down=top_down, on_error=on_error
    ):
      yield self.url(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    os.makedirs(os.path.dirname(self.local(dst)), exist_ok=True)
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    os.makedirs(os.path.dirname(self.local(dst)), exist_ok=True)
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    os.makedirs(os.path.dirname(self.local(dst)), exist_ok=True)
    return super().copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


class EmulatedBucket:
  """`with EmulatedBucket(tmp_path) as bucket:` — `gs://...` is `tmp_path`.

  `bucket.bypasses` lists the local file operations that were handed a
  `gs:` path while it was active; `bucket.local(url)` is where a URL's
  object lives.
  """

  def __init__(self, root):
    self.root = os.path.abspath(os.fspath(root))
    self.backend = _BucketBackend(self.root)
    self.bypasses: list[str] = []

  def local(self, url: str) -> str:
    return self.backend.local(url)

  @contextlib.contextmanager
  def _active(self) -> Iterator["EmulatedBucket"]:
    table = dict(gpath._PREFIX_TO_BACKEND)  # pylint: disable=protected-access
    table["gs"] = self.backend
    previous = paths.set_native_hook(self.local)
    _active.append(self)
    try:
      with (
          mock.patch.object(gpath, "_PREFIX_TO_BACKEND", table),
          mock.patch.object(gpath, "_is_tf_installed", lambda: False),
      ):
        yield self
    finally:
      _active.remove(self)
      paths.set_native_hook(previous)

  def __enter__(self) -> "EmulatedBucket":
    self._cm = self._active()
    return self._cm.__enter__()

  def __exit__(self, *exc) -> None:
    self._cm.__exit__(*exc)
