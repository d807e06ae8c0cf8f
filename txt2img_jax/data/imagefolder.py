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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from typing import Any

from PIL import Image

from txt2img_jax.data import inputs


def _find_metadata(root: str) -> str:
  if not os.path.isdir(root):
    if os.path.exists(root):
      raise NotADirectoryError(f"Image folder {root!r} is not a directory.")
    raise FileNotFoundError(f"Image folder {root!r} does not exist.")
  if not os.access(root, os.R_OK | os.X_OK):
    raise PermissionError(f"Image folder {root!r} is not readable.")
  found = [
      n
      for n in ("metadata.jsonl", "metadata.csv")
      if os.path.isfile(os.path.join(root, n))
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
  return os.path.join(root, found[0])


def _missing_columns_error(meta: str, columns, caption_column: str):
  return ValueError(
      f"{os.path.basename(meta)} has columns {sorted(columns)}, but needs "
      f"'file_name' and '{caption_column}' (set the caption column to the one "
      "that holds your captions)."
  )


def _jsonl_rows(meta: str, caption_column: str, issues: list[inputs.Issue]):
  """Yields (line, row dict); undecodable lines become issues."""
  name = os.path.basename(meta)
  checked = False
  with open(meta, "rb") as f:
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
  name = os.path.basename(meta)
  with open(meta, "rb") as f:
    # Bad bytes stay as surrogates, so one bad row doesn't sink the file.
    text = f.read().decode("utf-8-sig", errors="surrogateescape")
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
  stay inside the folder are ordinary files.
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
    self.root = os.path.abspath(os.fspath(root))
    self.caption_column = caption_column
    self.metadata_path = _find_metadata(self.root)
    self.issues: list[inputs.Issue] = []
    files, outside = _walk(self.root, follow_symlinks)
    rows = (
        _jsonl_rows if self.metadata_path.endswith(".jsonl") else _csv_rows
    )(self.metadata_path, caption_column, self.issues)
    self.candidates: list[inputs.Candidate] = []
    seen: set[str] = set()
    listed_stats = []
    for index, (line, row) in enumerate(rows):
      if row is None:
        continue
      name = row.get("file_name")
      if not isinstance(name, str) or not name.strip():
        self.issues.append(
            inputs.Issue(
                inputs.BAD_METADATA_LINE,
                os.path.basename(self.metadata_path),
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
      st = files[rel]
      listed_stats.append((rel, st.st_size, st.st_mtime_ns))
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
    self._fingerprint = self._summary(listed_stats)

  def _summary(self, listed_stats) -> dict[str, Any]:
    # Size and mtime of every listed file, hashed: a changed, added or
    # removed image changes the fingerprint without re-reading pixels.
    h = hashlib.sha256()
    for rel, size, mtime in sorted(listed_stats):
      h.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogatepass"))
    st = os.stat(self.metadata_path)
    return {
        "kind": self.kind,
        "path": self.root,
        "metadata": os.path.basename(self.metadata_path),
        "metadata_size": st.st_size,
        "metadata_mtime_ns": st.st_mtime_ns,
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
    return (
        inputs.open_image(os.path.join(self.root, cand.key)),
        list(cand.captions or ()),
    )
