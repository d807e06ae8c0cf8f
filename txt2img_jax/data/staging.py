"""A data dir in a bucket (`gs://...`), through local copies where needed.

Every data file goes through `utils/paths`, so a data dir, an image folder,
a metadata file or tar shards may be bucket URLs. ArrayRecord is the
exception: its reader and writer are C++ that open local files only (grain's
`ArrayRecordDataSource`, TFDS's `array_record` files), so they get local
copies, made here:

- Reading: a prepared split's shards (or a TFDS data set's files) in a
  bucket are copied once into the stage dir, `$TXT2IMG_STAGE_DIR` or else
  `~/.cache/txt2img_jax/staged`, as `<stage>/<key>/gs/<bucket>/<path>`,
  where `key` names their content (a prepared dir's manifest, a TFDS dir's
  listing of names, sizes and times): a rebuilt data set never reads an old
  copy. A copy is kept while its size matches, so later runs on the machine
  start at once; every host copies the whole split it reads, so its local
  disk needs room for it. The stage dir is a cache: nothing prunes it, and
  it can be deleted whenever no run is reading from it.
- Writing: a shard is written to a temporary file under `<stage>/tmp` and
  uploaded under its final name: a bucket object appears whole or not at
  all, which is what the local rename of a temporary name gives. (A killed
  run may leave its temporary file there; nothing else does.)
- Locks: a bucket has no `flock`. Preparing records in a data dir takes no
  lock, local or remote (the hosts of one run share the work through
  `records_hosts.Hosts`); two unrelated runs preparing the same remote dir
  at the same time are not protected from each other. The shapes set is
  generated in a local copy under a local lock and uploaded: generation is
  deterministic, so two hosts uploading it write the same objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from typing import Any, Sequence

from txt2img_jax.utils import paths

STAGE_ENV = "TXT2IMG_STAGE_DIR"
DEFAULT_STAGE_DIR = "~/.cache/txt2img_jax/staged"


def stage_root() -> str:
  """The local dir of staged copies (see the module doc)."""
  root = os.environ.get(STAGE_ENV) or DEFAULT_STAGE_DIR
  if paths.is_remote(root):
    raise ValueError(f"{STAGE_ENV}={root!r} must be a local dir")
  return paths.abspath(root)


def content_key(obj: Any) -> str:
  """A short name for JSON-able content (the stage dir's `key`)."""
  text = json.dumps(obj, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def local_dir(remote_dir: str, key: str) -> str:
  """Where the files of `remote_dir` are staged under `key`."""
  scheme, rest = paths.abspath(remote_dir).split("://", 1)
  return os.path.join(stage_root(), key, scheme, *rest.split("/"))


def stage(path: str, key: str) -> str:
  """A local path with the file's content: `path` itself when local."""
  if not paths.is_remote(path):
    return path
  return paths.local_copy(path, os.path.join(stage_root(), key))


def stage_files(remote_dir: str, key: str, last: Sequence[str] = ()) -> str:
  """Copies the files at the top of `remote_dir` (not its folders) to
  `local_dir(remote_dir, key)`, those named in `last` after the others (a
  completeness marker); returns that dir."""
  names = [
      n
      for n in paths.listdir(remote_dir)
      if not paths.isdir(paths.join(remote_dir, n))
  ]
  names.sort(key=lambda n: n in last)
  for name in names:
    stage(paths.join(remote_dir, name), key)
  return local_dir(remote_dir, key)


def upload_files(local: str, remote_dir: str, last: Sequence[str] = ()) -> None:
  """Copies the files at the top of the local dir `local` to `remote_dir`,
  those named in `last` after the others."""
  names = sorted(
      (n for n in os.listdir(local) if os.path.isfile(os.path.join(local, n))),
      key=lambda n: n in last,
  )  # `local` is a local dir: os is right here.
  for name in names:
    upload(os.path.join(local, name), paths.join(remote_dir, name))


def upload(local: str, url: str) -> None:
  """Copies the local file `local` to `url` in one upload: the object
  appears whole once it is closed, and a failed copy leaves none."""
  paths.copy(local, url)


def scratch_file(suffix: str = "") -> str:
  """A new empty local file under `<stage>/tmp`, for the caller to write,
  upload and remove."""
  scratch = os.path.join(stage_root(), "tmp")
  os.makedirs(scratch, exist_ok=True)  # Local by construction.
  fd, path = tempfile.mkstemp(suffix=suffix, dir=scratch)
  os.close(fd)
  return path


def probe_writable(path: str) -> None:
  """Raises OSError when files cannot be made in the dir `path` (made
  first). A local probe is an unnamed temporary file (nothing left behind
  if killed); a bucket gets a small object, removed at once."""
  paths.makedirs(path)
  if paths.is_remote(path):
    probe = paths.join(path, f".write_probe_{uuid.uuid4().hex}")
    paths.write_bytes(probe, b"")
    paths.remove(probe)
    return
  with tempfile.TemporaryFile(dir=path):
    pass
