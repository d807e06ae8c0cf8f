"""Prepared data: the record format and the reader of its ArrayRecord shards.

`records_prepare.prepare` writes a prepared directory (shards, report,
fingerprint, manifest; its doc lists the layout); this module reads it. A
directory in a bucket is read from local copies of its shards
(`staging.py`: ArrayRecord's reader opens local files only).

Record format (one msgpack map per record, `decode_record` reads it):
  image     raw uint8 bytes of the (S, S, 3) image, row-major
  size      S
  captions  list[str], all of the example's captions (>= 1)
  index     int, the row's position in its source (its metadata row, or its
            TFDS record index)
  key       str, the example's name in its source (file_name)
  extras    {name: [dtype str, shape list, raw bytes]} from `featurize`
Raw pixels rather than PNG: at 256 px a PNG costs ~4.5 ms to decode against
~0.17 ms for raw bytes to float (measured on this 2-core machine), which
would make the input pipeline, not the step, the bottleneck of a big batch;
photos compress little as PNG anyway (~0.6-0.8 of raw), so the disk saved is
small.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import grain
import msgpack
import numpy as np

from txt2img_jax.data import staging
from txt2img_jax.utils import paths

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
REPORT = "prepare_report.json"
CHUNKS_DIR = ".chunks"
SPLITS = ("train", "val")
RESERVED_KEYS = frozenset({"image", "captions", "index", "key", "size"})


# ------------------------------------------------------------------ records


def encode_record(
    image: np.ndarray,
    captions: Sequence[str],
    index: int,
    key: str,
    extras: Mapping[str, np.ndarray] = (),
) -> bytes:
  size = image.shape[0]
  if image.dtype != np.uint8 or image.shape != (size, size, 3):
    raise ValueError(
        f"Expected a uint8 (S, S, 3) image, got {image.dtype} "
        f"{image.shape}."
    )
  ex = {}
  for name, arr in dict(extras).items():
    arr = np.ascontiguousarray(arr)
    ex[name] = [arr.dtype.str, list(arr.shape), arr.tobytes()]
  return msgpack.packb(
      {
          "image": image.tobytes(),
          "size": int(size),
          "captions": list(captions),
          "index": int(index),
          "key": key,
          "extras": ex,
      },
      use_bin_type=True,
  )


def read_record(raw: bytes) -> dict[str, Any]:
  """A record's fields as stored (image still bytes; see the module doc)."""
  return msgpack.unpackb(raw, raw=False)


def decode_record(raw: bytes) -> dict[str, Any]:
  """Record bytes -> {"image": float32 (S, S, 3) in [0, 1], "captions":
  list[str], "index": int, + one array per featurize output}."""
  rec = read_record(raw)
  s = rec["size"]
  image = np.frombuffer(rec["image"], np.uint8).reshape(s, s, 3)
  out = {
      "image": image.astype(np.float32) / 255.0,
      "captions": rec["captions"],
      "index": rec["index"],
  }
  for name, (dtype, shape, data) in rec["extras"].items():
    out[name] = np.frombuffer(data, np.dtype(dtype)).reshape(shape)
  return out


def decode_image_uint8(raw: bytes) -> np.ndarray:
  rec = read_record(raw)
  s = rec["size"]
  return np.frombuffer(rec["image"], np.uint8).reshape(s, s, 3)


class DecodeRecord(grain.transforms.Map):
  """`decode_record` as a grain map, for `MapDataset.source(...).map(...)`."""

  def map(self, element: bytes) -> dict[str, Any]:
    return decode_record(element)


# ------------------------------------------------------------------- reader


def load_manifest(out_dir: str) -> dict[str, Any]:
  path = paths.join(out_dir, MANIFEST)
  if not paths.isfile(path):
    state = (
        "an unfinished preparation (rerun prepare to finish it)"
        if paths.exists(paths.join(out_dir, FINGERPRINT))
        else "no prepared data"
    )
    raise FileNotFoundError(
        f"{out_dir!r} holds {state}: {MANIFEST} is " "missing."
    )
  return json.loads(paths.read_text(path))


class PreparedSource:
  """Random access to one split's records (bytes), for grain.

  ds = grain.MapDataset.source(PreparedSource(dir, "train"))
  ds = ds.map(DecodeRecord())
  """

  def __init__(self, out_dir: str, split: str = "train"):
    self.out_dir = os.fspath(out_dir)
    self.manifest = load_manifest(self.out_dir)
    splits = self.manifest["splits"]
    if split not in splits:
      raise ValueError(
          f"No split {split!r} in {self.out_dir!r}; it has "
          f"{sorted(splits)}."
      )
    self.split = split
    info = splits[split]
    self._len = info["num_records"]
    # Local shards as they are; a bucket's staged under the manifest's key.
    key = staging.content_key(self.manifest)
    files = [
        staging.stage(paths.join(self.out_dir, s), key) for s in info["shards"]
    ]
    self._source = grain.sources.ArrayRecordDataSource(files) if files else None

  @property
  def fingerprint(self) -> dict[str, Any]:
    return self.manifest["fingerprint"]

  @property
  def extras(self) -> dict[str, dict[str, Any]]:
    """{name: {"dtype", "shape"}} of the featurize arrays in each record."""
    return self.manifest["extras"]

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> bytes:
    if not -self._len <= index < self._len:
      raise IndexError(
          f"Record {index} out of range for split "
          f"{self.split!r} of {self._len}."
      )
    return self._source[index % self._len]

  def __repr__(self) -> str:
    return f"PreparedSource({self.out_dir!r}, {self.split!r}, n={self._len})"
