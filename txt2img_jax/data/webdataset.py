"""WebDataset tar shards (what `img2dataset` writes) as a prepare source.

    --config.data.name=webdataset --config.data.path='DIR/{00000..01023}.tar'

A shard is a plain (uncompressed) tar whose members are grouped into samples
by key: `KEY.jpg`, `KEY.txt`, `KEY.json` belong to sample `KEY` (the key is
the member's path up to the first dot of its file name, as in WebDataset).
The image is the first member whose extension is in `data.wds_image_keys`;
the caption is the member `data.wds_caption_key` names: an extension
(`txt`: the whole member, UTF-8) or `json:FIELD` (a field of `KEY.json`; a
list is a list of captions, `a/b` a nested field).

`data.path` expands `{a..b}` ranges (zero padding kept), `{x,y}` lists and
shell globs, in that order; the shards are read in the order written (globs
sorted). Listing reads every tar header and the small caption members once;
the images are read later by offset, so `records_prepare` decodes them in
parallel threads like a folder's files. A shard that is not a tar, or is cut
short, is counted (`bad_shard`) with what was listed before the break kept;
never fatal. Compressed shards (`.tar.gz`) cannot be read by offset and are
counted the same way, with what to do.

Shards may be in a bucket (`data.path='gs://b/shards/{00000..01023}.tar'`):
globs are matched by listing the bucket, and tar headers, captions and
images are read through `utils/paths` file objects (seek and read: a
bucket client reads ranges, buffered), never copied whole to a local disk.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from txt2img_jax.data import inputs
from txt2img_jax.data import records_write
from txt2img_jax.utils import paths

DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp"
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
  """'a/{000..002}.tar' -> ['a/000.tar', 'a/001.tar', 'a/002.tar'];
  '{x,y}' lists too, any number of groups (the leftmost varies slowest)."""
  found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
  if not found:
    return [pattern]
  m = min(found, key=lambda m: m.start())
  head, tail = pattern[: m.start()], pattern[m.end() :]
  if m.re is _RANGE:
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
    step = 1 if int(hi) >= int(lo) else -1
    parts = [str(n).zfill(width) for n in range(int(lo), int(hi) + step, step)]
  else:
    parts = m.group(1).split(",")
  return [p for part in parts for p in expand_braces(head + part + tail)]


def shard_paths(pattern: str) -> list[str]:
  """The shard files a `data.path` names, in order; an error line if none."""
  if not pattern:
    raise ValueError(
        "data.name='webdataset' needs data.path: tar shards, e.g. "
        "'DIR/{00000..00099}.tar' or 'DIR/*.tar'"
    )
  found, missing = [], []
  remote = paths.is_remote(pattern)
  for p in expand_braces(pattern if remote else os.path.expanduser(pattern)):
    if glob.has_magic(p):  # A test of the string only.
      # Local shards keep glob's own paths (relative stays relative): the
      # fingerprint hashes them, and prepared data must stay reusable.
      found += paths.glob(p) if remote else sorted(glob.glob(p))
    elif paths.isfile(p):
      found.append(p)
    else:
      missing.append(p)
  if not found:
    raise FileNotFoundError(f"data.path={pattern!r} names no tar shard")
  if missing:
    raise FileNotFoundError(
        f"data.path={pattern!r}: {len(missing)} of its shards do not exist "
        f"(first: {missing[0]!r}); fix the pattern or remove the range's gap"
    )
  seen, out = set(), []
  for p in found:
    if p not in seen:
      seen.add(p)
      out.append(p)
  return out


def split_member_name(name: str) -> tuple[str, str]:
  """'dir/000123.jpg' -> ('dir/000123', 'jpg'); 'a.b.json' -> ('a', 'b.json')."""
  d, base = os.path.split(name)
  if "." not in base:
    return name, ""
  stem, ext = base.split(".", 1)
  return (os.path.join(d, stem) if d else stem), ext.lower()


def _json_field(value: Any, field: str) -> Any:
  for part in field.split("/"):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return value


class WebDatasetSource:
  """The samples of tar shards, ready for `records_prepare.prepare`."""

  kind = "webdataset"

  def __init__(
      self,
      pattern: str,
      *,
      image_keys: str = DEFAULT_IMAGE_KEYS,
      caption_key: str = "txt",
  ):
    self.pattern = pattern
    self.image_keys = tuple(
        k.strip().lower().lstrip(".")
        for k in re.split(r"[;,]", image_keys)
        if k.strip()
    )
    if not self.image_keys:
      raise ValueError("data.wds_image_keys names no extension")
    self.caption_key = caption_key
    if caption_key.startswith("json:"):
      self._caption_ext, self._caption_field = "json", caption_key[5:]
      if not self._caption_field:
        raise ValueError("data.wds_caption_key='json:' needs a field name")
    else:
      self._caption_ext, self._caption_field = caption_key.lower(), None
    self.shards = shard_paths(pattern)
    self.issues: list[inputs.Issue] = []
    self.candidates: list[inputs.Candidate] = []
    self._where: dict[str, tuple[str, int, int]] = {}
    stats = []
    for shard in self.shards:
      stats.append((shard, *paths.size_mtime_ns(shard)))
      self._list_shard(shard)
    h = hashlib.sha256()
    for shard, size, mtime in stats:
      h.update(f"{shard}\0{size}\0{mtime}\n".encode("utf-8", "surrogatepass"))
    self._fingerprint = {
        "kind": self.kind,
        "pattern": pattern,
        "image_keys": list(self.image_keys),
        "caption_key": caption_key,
        "num_shards": len(stats),
        "bytes": sum(s for _, s, _ in stats),
        "files_digest": h.hexdigest(),
    }

  def _list_shard(self, shard: str) -> None:
    name = paths.basename(shard)
    try:
      with paths.open(shard, "rb") as f:
        self._list_tar(f, shard, name)
    except OSError as e:  # Cannot be opened, or read.
      self.issues.append(
          inputs.Issue(inputs.BAD_SHARD, name, None, f"{type(e).__name__}: {e}")
      )

  def _list_tar(self, f, shard: str, name: str) -> None:
    """Lists the samples of one shard, opened as `f` (seekable)."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    try:
      head = f.read(4)
      if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == (b"\xfd7zX"):
        raise inputs.BadInput(
            inputs.BAD_SHARD,
            "a compressed tar: its members cannot be read by offset; "
            "write plain .tar shards (img2dataset's default)",
        )
      f.seek(0, os.SEEK_END)
      size = f.tell()
      f.seek(0)
      with tarfile.open(fileobj=f, mode="r:") as tar:
        member = tar.next()
        while member is not None:
          if member.isfile():
            key, ext = split_member_name(member.name)
            if member.offset_data + member.size > size:
              # tarfile ends quietly at a cut; the cut sample is dropped.
              if key in samples:
                del samples[key]
                order.remove(key)
              raise tarfile.ReadError(f"cut short in member {member.name!r}")
            if key not in samples:
              samples[key] = {}
              order.append(key)
            samples[key][ext] = member
          member = tar.next()
    except inputs.BadInput as e:
      self.issues.append(inputs.Issue(e.reason, name, None, str(e)))
    except (tarfile.TarError, EOFError, OSError) as e:
      # Not a tar, or cut short: what was listed before the break is kept.
      self.issues.append(
          inputs.Issue(
              inputs.BAD_SHARD,
              name,
              None,
              f"{type(e).__name__}: {e}; the {len(order)} sample(s) listed before "
              "it are kept",
          )
      )
    for key in order:
      self._add_sample(f, shard, name, key, samples[key])

  def _add_sample(self, f, shard, name, key, members) -> None:
    where = f"{name}:{key}"
    image = next((members[e] for e in self.image_keys if e in members), None)
    if image is None:
      self.issues.append(
          inputs.Issue(
              inputs.MISSING_FILE,
              where,
              None,
              f"no image member ({', '.join(self.image_keys)}); has "
              f"{', '.join(sorted(members)) or 'nothing'}",
          )
      )
      return
    if key in self._where:
      self.issues.append(
          inputs.Issue(
              inputs.DUPLICATE_ROW,
              where,
              None,
              f"key also in {paths.basename(self._where[key][0])}: the "
              "first is used",
          )
      )
      return
    captions: list[str] = []
    member = members.get(self._caption_ext)
    if member is not None:
      f.seek(member.offset_data)
      raw = f.read(member.size)
      if self._caption_field is None:
        captions = inputs.normalize_captions(raw)
      else:
        try:
          value = json.loads(raw)
        except ValueError:
          self.issues.append(
              inputs.Issue(
                  inputs.BAD_METADATA_LINE, f"{where}.json", None, "not JSON"
              )
          )
          return
        captions = inputs.normalize_captions(
            _json_field(value, self._caption_field)
        )
    self._where[key] = (shard, image.offset_data, image.size)
    self.candidates.append(
        inputs.Candidate(
            key=key, index=len(self.candidates), captions=tuple(captions)
        )
    )

  def fingerprint(self) -> dict[str, Any]:
    return dict(self._fingerprint)

  def describe(self) -> str:
    return f"web-dataset shards {self.pattern} ({len(self.shards)} files)"

  def read(self, cand: inputs.Candidate) -> tuple[Image.Image, list[str]]:
    """The opened image and captions of a sample; raises inputs.BadInput."""
    shard, offset, size = self._where[cand.key]
    try:
      with paths.open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    except OSError as e:
      raise inputs.BadInput(
          inputs.MISSING_FILE, f"cannot read {shard}: {e}"
      ) from e
    if len(data) != size:
      raise inputs.BadInput(
          inputs.CORRUPT_IMAGE,
          f"member cut short ({len(data)} of {size} bytes)",
      )
    return inputs.open_image(data), list(cand.captions or ())


# ------------------------------------------------------------------ streaming


class _Samples:
  """Random access to one split's samples: element i is (split, i); the
  pixels are read by the decode transform, in the pipeline's threads."""

  def __init__(self, split: str, size: int):
    self._split, self._size = split, size

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, i: int) -> tuple[str, int]:
    return self._split, int(i)


class DecodeStreamed:
  """(split, i) -> {"image": float32 in [0, 1], "captions"}: the sample's
  bytes read from its shard and decoded by the rules `prepare` applies
  (`records_write.load_one`), so a streamed run sees the pixels a prepared
  one stores. A sample that cannot be used (corrupt, too small, no caption)
  is replaced by the next usable one of its split, the same at every
  resume, and logged once."""

  MAX_TRIES = 64

  def __init__(self, source: WebDatasetSource, splits, opts):
    self._source, self._splits, self._opts = source, splits, opts
    self._warned: set[str] = set()

  def map(self, element: tuple[str, int]) -> dict[str, Any]:
    split, i = element
    members = self._splits[split]
    n = len(members)
    for k in range(min(self.MAX_TRIES, n)):
      cand = members[(i + k) % n]
      image, captions, issues = records_write.load_one(
          self._source, cand, self._opts
      )
      if image is not None:
        return {
            "image": image.astype(np.float32) / 255.0,
            "captions": captions,
        }
      if cand.key not in self._warned:
        self._warned.add(cand.key)
        logging.warning(
            "streamed sample %s skipped (%s %s); the next one is used",
            cand.key,
            issues[0].reason,
            issues[0].detail,
        )
    raise ValueError(
        f"{self.MAX_TRIES} streamed samples in a row from {split} sample {i} "
        "are unusable; prepare the shards to read the report"
    )


class StreamedShards:
  """Web-dataset shards read during training (`data.stream=True`): no
  prepare step and no cached latents or text features (the frozen encoders
  run in the step); the splits are the ones `prepare` makes. `out_dir`
  holds what the run caches: the vocabulary, FD reference statistics."""

  EVAL_SPLITS = {"val": "val"}
  DEFAULT_EVALUATOR = "prompts"

  def __init__(self, source: WebDatasetSource, out_dir: str, opts, splits):
    self.source, self.out_dir = source, out_dir
    self._splits = splits
    self._decode = DecodeStreamed(source, splits, opts)
    paths.makedirs(out_dir)

  def as_data_source(self, split: str) -> _Samples:
    return _Samples(split, self.split_size(split))

  def decode_transform(self):
    import grain  # pylint: disable=g-import-not-at-top

    decode = self._decode

    class Decode(grain.transforms.Map):

      def map(self, element):
        return decode.map(element)

    return Decode()

  def split_size(self, split: str) -> int:
    return len(self._splits.get(split, []))

  def vocabulary(self) -> list[str]:
    """Every word of the train captions, most frequent first (from the
    listing: the captions are read with the tar headers)."""
    from txt2img_jax.data import prepared  # pylint: disable=g-import-not-at-top

    return prepared.cached_vocabulary(
        self.out_dir,
        lambda: (
            c for cand in self._splits["train"] for c in (cand.captions or ())
        ),
    )

  def extras(self) -> dict[str, Any]:
    return {}
