"""A user's images and captions in the Hugging Face `imagefolder` layout.

    DIR/metadata.jsonl   {"file_name": "a/0001.jpg", "text": "a red bus"}
    DIR/a/0001.jpg           ("text" may also be a list: COCO has 5 captions)

or `DIR/metadata.csv` with a `file_name,text` header (a CSV caption cell that
is a JSON list of strings, e.g. `["one", "two"]`, is read as a list). Only the
metadata file at the top of DIR is read. The caption column is configurable.

This module lists the rows (finding the problems a listing can see: bad
metadata lines, duplicates, missing files, unlisted images); `inputs.py` turns one
image into the uint8 (S, S, 3) array that is stored. `records_prepare.prepare` runs it
over the whole folder; every problem becomes a counted reason in its report.

DIR may be a bucket URL (`gs://bucket/images`): it is listed and read
through `utils/paths` (a bucket has no links, so `follow_symlinks` does not
apply; its objects' times are to the second). A local folder is walked with
`os` itself, for its links' rules and its files' exact times.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import os
from typing import Any

from etils import epath
from PIL import Image

from txt2img_jax.data import inputs
from txt2img_jax.utils import paths

# Threads that stat a bucket's listed images (one request each).
_STAT_THREADS = 32


def _find_metadata(root: str) -> str:
  if not paths.isdir(root):
    if paths.exists(root):
      raise NotADirectoryError(f"Image folder {root!r} is not a directory.")
    raise FileNotFoundError(f"Image folder {root!r} does not exist.")
  if not paths.is_remote(root) and not os.access(root, os.R_OK | os.X_OK):
    raise PermissionError(f"Image folder {root!r} is not readable.")
  found = [
      n
      for n in ("metadata.jsonl", "metadata.csv")
      if paths.isfile(paths.join(root, n))
  ]
  if not found:
    raise FileNotFoundError(
        f"No metadata.jsonl or metadata.csv in {root!r}: add one whose rows "
        "give `file_name` (relative path) and a caption column."
    )
  if len(found) > 1:
    raise ValueError(
        f"Both metadata.jsonl and metadata.csv are in {root!r}; "
        "keep the one to use."
    )
  return paths.join(root, found[0])


def _missing_columns_error(meta: str, columns, caption_column: str):
  return ValueError(
      f"{paths.basename(meta)} has columns {sorted(columns)}, but needs "
      f"'file_name' and '{caption_column}' (set the caption column to the one "
      "that holds your captions)."
  )


def _jsonl_rows(meta: str, caption_column: str, issues: list[inputs.Issue]):
  """Yields (line, row dict); undecodable lines become issues."""
  name = paths.basename(meta)
  checked = False
  with paths.open(meta, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw.decode("utf-8"))
        if not isinstance(row, dict):
          raise ValueError("not a JSON object")
      except ValueError:  # Also UnicodeDecodeError and JSONDecodeError.
        issues.append(inputs.Issue(inputs.BAD_METADATA_LINE, name, line_no))
        yield line_no, None
        continue
      if not checked:
        # The first readable row sets the columns, as in Hugging Face's.
        if "file_name" not in row or caption_column not in row:
          raise _missing_columns_error(meta, row.keys(), caption_column)
        checked = True
      yield line_no, row


def _parse_csv_caption(cell: str | None) -> Any:
  if cell is not None and cell.lstrip().startswith("["):
    try:
      value = json.loads(cell)
      if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    except ValueError:
      pass
  return cell


def _csv_rows(meta: str, caption_column: str, issues: list[inputs.Issue]):
  name = paths.basename(meta)
  # Bad bytes stay as surrogates, so one bad row doesn't sink the file.
  text = paths.read_bytes(meta).decode("utf-8-sig", errors="surrogateescape")
  reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra")
  columns = reader.fieldnames or []
  if "file_name" not in columns or caption_column not in columns:
    raise _missing_columns_error(meta, columns, caption_column)
  while True:
    start = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error:
      issues.append(inputs.Issue(inputs.BAD_METADATA_LINE, name, start))
      yield start, None
      continue
    bad = "\0extra" in row or any(
        isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v)
        for v in row.values()
    )
    if bad:
      issues.append(inputs.Issue(inputs.BAD_METADATA_LINE, name, start))
      yield start, None
      continue
    row[caption_column] = _parse_csv_caption(row.get(caption_column))
    yield start, row


def _walk(
    root: str, follow_symlinks: bool = False
) -> tuple[dict[str, os.stat_result], dict[str, str]]:
  """(every file under root by normalised relative path, the links among
  them that lead outside root -> their target).

  A link (to a file, or a linked folder) whose target lies outside the
  folder is not taken unless `follow_symlinks`: a folder of images is what
  the user handed over, not what its links reach (`/etc/...`). Links that
  stay inside the folder are ordinary files. (A local folder, walked with
  `os` itself for the links; `_walk_remote` lists a bucket's.)
  """
  real_root = os.path.realpath(root)
  files, outside = {}, {}
  seen_dirs = set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    real_dir = os.path.realpath(dirpath)
    if real_dir in seen_dirs:  # A link loop, or a folder linked twice.
      dirnames[:] = []
      continue
    seen_dirs.add(real_dir)
    dirnames.sort()
    for name in list(dirnames):
      path = os.path.join(dirpath, name)
      if not follow_symlinks and not _inside(path, real_root):
        dirnames.remove(name)
        outside[os.path.relpath(path, root)] = os.path.realpath(path)
    for fn in filenames:
      path = os.path.join(dirpath, fn)
      rel = os.path.relpath(path, root)
      if not follow_symlinks and not _inside(path, real_root):
        outside[rel] = os.path.realpath(path)
        continue
      try:
        files[rel] = os.stat(path)
      except OSError:  # A dangling link: listed as missing if named.
        continue
  return files, outside


def _walk_remote(root: str) -> dict[str, None]:
  """Every object under a bucket folder, by relative path (`_walk`'s first
  dict, without the stats: `_stats` asks for the listed ones only)."""
  top = paths.as_path(root)
  files = {}
  for dirpath, _, filenames in top.walk():
    where = epath.Path(dirpath).relative_to(top)
    for fn in filenames:
      files[os.path.normpath(os.path.join(where, fn))] = None
  return files


def _stats(root: str, files: dict[str, Any], rels: list[str]):
  """(rel, size, mtime ns) of each listed file: from `_walk`'s stats, or
  one request per object of a bucket (in threads)."""
  if not paths.is_remote(root):
    return [(r, files[r].st_size, files[r].st_mtime_ns) for r in rels]
  with concurrent.futures.ThreadPoolExecutor(_STAT_THREADS) as pool:
    found = pool.map(lambda r: paths.size_mtime_ns(paths.join(root, r)), rels)
    return [(r, *st) for r, st in zip(rels, found)]


def _inside(path: str, real_root: str) -> bool:
  real = os.path.realpath(path)
  return real == real_root or real.startswith(real_root + os.sep)


class ImageFolderSource:
  """The rows of an image folder, ready for `records_prepare.prepare`.

  Listing happens once, here; `issues` holds what listing found. Fatal
  problems (no folder, no metadata, missing columns) raise from the
  constructor with one line saying what to change.
  """

  kind = "imagefolder"

  def __init__(
      self,
      root: str,
      caption_column: str = "text",
      follow_symlinks: bool = False,
  ):
    self.root = paths.abspath(root)
    self.caption_column = caption_column
    self.metadata_path = _find_metadata(self.root)
    self.issues: list[inputs.Issue] = []
    if paths.is_remote(self.root):
      files, outside = _walk_remote(self.root), {}
    else:
      files, outside = _walk(self.root, follow_symlinks)
    rows = (
        _jsonl_rows if self.metadata_path.endswith(".jsonl") else _csv_rows
    )(self.metadata_path, caption_column, self.issues)
    self.candidates: list[inputs.Candidate] = []
    seen: set[str] = set()
    listed = []
    for index, (line, row) in enumerate(rows):
      if row is None:
        continue
      name = row.get("file_name")
      if not isinstance(name, str) or not name.strip():
        self.issues.append(
            inputs.Issue(
                inputs.BAD_METADATA_LINE,
                paths.basename(self.metadata_path),
                line,
            )
        )
        continue
      rel = os.path.normpath(name.strip().replace("\\", "/"))
      if rel in seen:
        self.issues.append(inputs.Issue(inputs.DUPLICATE_ROW, rel, line))
        continue
      seen.add(rel)
      under = next(
          (o for o in outside if rel == o or rel.startswith(o + os.sep)), None
      )
      if under is not None:  # A link out of the folder (or through one).
        self.issues.append(
            inputs.Issue(
                inputs.OUTSIDE_FOLDER,
                rel,
                line,
                f"a link to {outside[under]} (data.follow_symlinks=True "
                "takes it)",
            )
        )
        continue
      if rel not in files:  # Also catches absolute and '../' names.
        self.issues.append(inputs.Issue(inputs.MISSING_FILE, rel, line))
        continue
      listed.append(rel)
      self.candidates.append(
          inputs.Candidate(
              key=rel,
              index=index,
              line=line,
              captions=tuple(
                  inputs.normalize_captions(row.get(caption_column))
              ),
          )
      )
    for rel in sorted(files):
      if (
          rel not in seen
          and os.path.splitext(rel)[1].lower() in inputs.IMAGE_EXTENSIONS
      ):
        self.issues.append(inputs.Issue(inputs.UNLISTED_IMAGE, rel))
    self._fingerprint = self._summary(_stats(self.root, files, listed))

  def _summary(self, listed_stats) -> dict[str, Any]:
    # Size and mtime of every listed file, hashed: a changed, added or
    # removed image changes the fingerprint without re-reading pixels.
    h = hashlib.sha256()
    for rel, size, mtime in sorted(listed_stats):
      h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogatepass"))
    meta_size, meta_mtime_ns = paths.size_mtime_ns(self.metadata_path)
    return {
        "kind": self.kind,
        "path": self.root,
        "metadata": paths.basename(self.metadata_path),
        "metadata_size": meta_size,
        "metadata_mtime_ns": meta_mtime_ns,
        "caption_column": self.caption_column,
        "num_files": len(listed_stats),
        "bytes": sum(s for _, s, _ in listed_stats),
        "files_digest": h.hexdigest(),
    }

  def fingerprint(self) -> dict[str, Any]:
    return dict(self._fingerprint)

  def describe(self) -> str:
    return f"image folder {self.root}"

  def read(self, cand: inputs.Candidate) -> tuple[Image.Image, list[str]]:
    """The opened image and captions of a candidate; raises inputs.BadInput."""
    path = paths.join(self.root, cand.key)
    if paths.is_remote(path):
      try:
        data = paths.read_bytes(path)
      except FileNotFoundError as e:
        raise inputs.BadInput(
            inputs.MISSING_FILE, "file vanished after listing"
        ) from e
      except OSError as e:
        raise inputs.BadInput(
            inputs.MISSING_FILE, f"cannot read: {type(e).__name__}: {e}"
        ) from e
      return inputs.open_image(data), list(cand.captions or ())
    # A local file is opened by PIL itself, lazily: an image over
    # max_pixels is skipped after reading its header only.
    return inputs.open_image(path), list(cand.captions or ())
