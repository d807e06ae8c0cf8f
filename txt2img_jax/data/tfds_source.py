"""A user's TFDS data set (an image and a text feature) as a prepare source.

Any prepared TFDS data set stored as `array_record` works, read with
`tfds.builder(name, data_dir=...).as_data_source(split)`: random access, no
TensorFlow input pipeline. Keys may name nested features with '/', e.g.
`coco_captions` has `image` and `captions/text` (five captions per image).
The TFDS splits map onto the prepared ones: `train_split` -> train and
`val_split` -> val; without a `val_split`, val is a stable hash-chosen share
of `train_split` (see `records_prepare.prepare`).

A data set in a bucket (`data.tfds_data_dir=gs://...`) is read from a local
copy of its files (`staging.py`: ArrayRecord's reader opens local files
only), made once per machine; the copy needs the data set's size on disk.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from txt2img_jax.data import inputs
from txt2img_jax.data import staging
from txt2img_jax.utils import paths

# TFDS writes it last: a staged copy is complete once it is there.
_INFO_FILE = "dataset_info.json"


def _get(element: dict[str, Any], key: str) -> Any:
  value = element
  for part in key.split("/"):
    value = value[part]
  return value


def _to_pil(array: np.ndarray) -> Image.Image:
  a = np.asarray(array)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.dtype == np.uint16:
    return Image.fromarray(a.astype(np.uint16), mode=None)
  if a.dtype != np.uint8:
    raise inputs.BadInput(
        inputs.CORRUPT_IMAGE, f"image dtype {a.dtype} is not " "uint8 or uint16"
    )
  if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
    raise inputs.BadInput(
        inputs.CORRUPT_IMAGE,
        f"image shape {a.shape} is not "
        "(H, W), (H, W, 1), (H, W, 3) or (H, W, 4)",
    )
  return Image.fromarray(a)


class TfdsSource:
  """The examples of one or two TFDS splits, ready for `records_prepare.prepare`."""

  kind = "tfds"

  def __init__(
      self,
      name: str,
      *,
      data_dir: str | None = None,
      image_key: str = "image",
      caption_key: str = "caption",
      train_split: str = "train",
      val_split: str | None = None,
  ):
    import tensorflow_datasets as tfds  # Heavy; only users of TFDS pay.

    self.name, self.image_key, self.caption_key = name, image_key, caption_key
    self.train_split, self.val_split = train_split, val_split
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for an unknown name.
      raise FileNotFoundError(
          f"No TFDS data set {name!r} (data_dir={data_dir!r}): {e}".split("\n")[
              0
          ]
      ) from e
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}; "
          "build it first (e.g. `tfds build`), with file_format=array_record."
      )
    # What the data set's files are (name, size, time), where they are.
    self._files_root = str(builder.data_dir)
    remote = paths.is_remote(self._files_root)
    self._files = [
        (fn, *paths.size_mtime_ns(paths.join(self._files_root, fn)))
        for fn in paths.listdir(self._files_root)
        if not (remote and paths.isdir(paths.join(self._files_root, fn)))
    ]
    if remote:
      builder = self._staged(builder, name)
    self._builder = builder
    self._sources = {}
    for split in filter(None, (train_split, val_split)):
      try:
        self._sources[split] = builder.as_data_source(split=split)
      except Exception as e:
        raise ValueError(
            f"Cannot read split {split!r} of TFDS {name!r} by random access "
            f"({type(e).__name__}: {e}); it needs file_format=array_record "
            f"and a split among {sorted(builder.info.splits)}."
        ) from e
    self._check_keys()
    self.issues: list[inputs.Issue] = []
    self.candidates = []
    for split, ds in self._sources.items():
      role = (
          None
          if val_split is None
          else ("train" if split == train_split else "val")
      )
      self.candidates += [
          inputs.Candidate(key=f"{split}/{i}", index=i, split=role)
          for i in range(len(ds))
      ]

  def _staged(self, builder, name: str):
    """The builder of a local copy of a bucket's data set (its files staged
    under a key of their listing, the info file last)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    # The data set's dir is <data dir>/<full name>: the copy keeps the layout.
    full_name = builder.info.full_name
    root = self._files_root[: -len(full_name)].rstrip("/")
    key = staging.content_key(self._files)
    staged = staging.stage_files(self._files_root, key, last=(_INFO_FILE,))
    local = tfds.builder(name, data_dir=staging.local_dir(root, key))
    if str(local.data_dir) != staged:
      raise ValueError(
          f"TFDS {name!r}: the local copy of {self._files_root} reads as "
          f"{local.data_dir}; name the version in data.tfds_name"
      )
    return local

  def _check_keys(self) -> None:
    ds = self._sources[self.train_split]
    if not len(ds):
      return
    element = ds[0]
    for what, key in (
        ("image_key", self.image_key),
        ("caption_key", self.caption_key),
    ):
      try:
        _get(element, key)
      except (KeyError, TypeError, IndexError):
        raise ValueError(
            f"TFDS {self.name!r} has no feature {key!r} (the {what}); its "
            f"features are {sorted(element)}."
        ) from None

  def fingerprint(self) -> dict[str, Any]:
    # The files behind the data set: a re-generated data set changes them.
    h = hashlib.sha256()
    root = self._files_root
    for fn, size, mtime_ns in sorted(self._files):
      h.update(f"{fn}\0{size}\0{mtime_ns}\n".encode())
    return {
        "kind": self.kind,
        "name": self.name,
        "path": root,
        "version": str(self._builder.version),
        "image_key": self.image_key,
        "caption_key": self.caption_key,
        "train_split": self.train_split,
        "val_split": self.val_split,
        "num_examples": {s: len(d) for s, d in self._sources.items()},
        "files_digest": h.hexdigest(),
    }

  def describe(self) -> str:
    return f"TFDS {self.name} ({', '.join(self._sources)})"

  def read(self, cand: inputs.Candidate) -> tuple[Image.Image, Any]:
    split, i = cand.key.rsplit("/", 1)
    try:
      element = self._sources[split][int(i)]
      image = _get(element, self.image_key)
      captions = _get(element, self.caption_key)
    except Exception as e:  # A record TFDS cannot decode.
      raise inputs.BadInput(
          inputs.CORRUPT_IMAGE, f"cannot read record: {type(e).__name__}: {e}"
      ) from e
    return _to_pil(image), captions
