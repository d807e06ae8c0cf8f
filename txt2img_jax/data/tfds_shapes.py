"""The captioned-shapes world as a TFDS data set stored as `array_record`.

`array_record` gives random access by index, which is what makes the input
pipeline resumable by step alone (see `pipeline.py`). Records are written in
generator order (`disable_shuffling`), so record `i` of a split is exactly
`shapes.example(seed, split, i, ...)`.

Every setting that changes the records is in the config name, so preparations
of different sizes or seeds never collide in one data dir.

A data dir in a bucket (`gs://...`): TFDS's `array_record` files are written
and read by C++ that opens local files only, so the set is generated in a
local copy of the data dir (`staging.py`'s stage dir, under a local lock)
and uploaded, its `dataset_info.json` last; a later run (another host)
copies it back down once. Generation is deterministic, so two hosts that
generate and upload it at once write the same objects: no bucket lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import inspect
import os
import time
from typing import Any

from absl import logging
from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds

from txt2img_jax.data import shapes
from txt2img_jax.data import staging
from txt2img_jax.utils import paths

_FILE_FORMAT = "array_record"
# TFDS writes it last: a data set's files are complete once it is there.
_INFO_FILE = "dataset_info.json"
# The stage dir's key of shapes copies: their content is fixed by the
# config name, which is in their path.
_STAGE_KEY = "shapes"

# What the structure benchmark reads of each example besides its image.
DESCRIPTION_KEYS = ("shapes", "colors", "sizes", "cells", "num_objects")


class DecodeExample(grain.transforms.Map):
  """A TFDS record to arrays: image float32 in [0, 1], caption a str."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    caption = element["caption"]
    if isinstance(caption, bytes):
      caption = caption.decode("utf-8")
    out = {
        "image": np.asarray(element["image"], np.float32) / 255.0,
        "caption": caption,
    }
    for k in DESCRIPTION_KEYS:
      out[k] = np.asarray(element[k], np.int32)
    return out


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """What a preparation of the shapes world depends on."""

  seed: int = 0
  image_size: int = 32
  num_train: int = 20_000
  num_test: int = 1_000
  num_heldout: int = 1_000
  jitter_px: float = 1.0


def config_name(
    seed: int,
    image_size: int,
    num_train: int,
    num_test: int,
    num_heldout: int,
    jitter_px: float,
) -> str:
  """E.g. `s32_seed0_n20000-1000-1000_j1p0` (only `[\\w.+-]` is allowed)."""
  jitter = f"{float(jitter_px):g}".replace(".", "p").replace("-", "m")
  return (
      f"s{image_size}_seed{seed}_n{num_train}-{num_test}-{num_heldout}"
      f"_j{jitter}"
  )


def make_config(
    seed: int = 0,
    image_size: int = 32,
    num_train: int = 20_000,
    num_test: int = 1_000,
    num_heldout: int = 1_000,
    jitter_px: float = 1.0,
) -> ShapesConfig:
  name = config_name(
      seed, image_size, num_train, num_test, num_heldout, jitter_px
  )
  return ShapesConfig(
      name=name,
      description="Procedural captioned shapes.",
      seed=seed,
      image_size=image_size,
      num_train=num_train,
      num_test=num_test,
      num_heldout=num_heldout,
      jitter_px=float(jitter_px),
  )


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
  """1-2 coloured shapes on black, with a caption and its structure."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # No class configs: every preparation passes its own `ShapesConfig`, and
  # TFDS refuses a passed config named like a class one (as happens when a
  # grain worker unpickles the builder).
  BUILDER_CONFIGS = []

  # TFDS's own lookup needs the `importlib_resources` back-port, which this
  # environment lacks; the file of this class is all it wants to know.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    n = shapes.MAX_OBJECTS
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(
                    shape=(s, s, 3), encoding_format="png"
                ),
                "caption": tfds.features.Text(),
                "shapes": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                "colors": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                "sizes": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                "cells": tfds.features.Tensor(shape=(n,), dtype=np.int32),
                "num_objects": tfds.features.Scalar(dtype=np.int32),
            }
        ),
        supervised_keys=None,
        # Record i of a split is example i: tests and the benchmark rely on it.
        disable_shuffling=True,
    )

  # --- What the input pipeline and the evaluators ask of a data set.
  # metric prefix -> split the structure benchmark scores.
  EVAL_SPLITS = {"eval": "test", "heldout": "heldout"}

  def decode_transform(self) -> DecodeExample:
    return DecodeExample()

  def vocabulary(self) -> list[str]:
    return shapes.vocabulary()

  def word_classes(self) -> tuple[tuple[str, ...], ...]:
    return shapes.word_classes()

  def forbidden_phrases(self) -> tuple[str, ...]:
    return shapes.forbidden_phrases()

  def split_size(self, split: str) -> int:
    c = self.builder_config
    return {"train": c.num_train, "test": c.num_test, "heldout": c.num_heldout}[
        split
    ]

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    c = self.builder_config
    sizes = {"train": c.num_train, "test": c.num_test, "heldout": c.num_heldout}
    return {
        split: self._generate_examples(split, num)
        for split, num in sizes.items()
    }

  def _generate_examples(self, split: str, num: int):
    c = self.builder_config
    for i in range(num):
      yield i, shapes.example(c.seed, split, i, c.image_size, c.jitter_px)


def _check_writable(data_dir: str) -> None:
  """Fails early and clearly, rather than deep inside TFDS's writer."""
  try:
    staging.probe_writable(data_dir)
  except OSError as e:
    raise PermissionError(
        f"Data dir {data_dir!r} is not writable ({e}), so the shapes data set "
        "cannot be prepared there. Pick another `data_dir`, or prepare it "
        "once where it can be written."
    ) from e


class CorruptDataError(ValueError):
  """Prepared records that do not match what their preparation wrote."""


def verify(builder: CaptionedShapes, probes: int = 3) -> None:
  """Cheap checks of prepared data before a run relies on it: each shard
  holds the records the data set's info says it has, and a few records per
  split (first, middle, last) decode. A cut or overwritten file fails here,
  in one message, instead of as a PIL error at some later step."""
  problems = []
  for name, split in builder.info.splits.items():
    for filename, expected in zip(split.filenames, split.shard_lengths):
      # Local: a bucket's set is verified in its local copy (module doc).
      path = os.path.join(builder.data_dir, filename)
      found = _count_records(path)
      if found != expected:
        problems.append(
            f"{filename} holds {found} records, expected " f"{expected}"
        )
    if any(name in p for p in problems):
      continue
    n = split.num_examples
    source = builder.as_data_source(split=name)
    for i in sorted(
        {int(round(k * (n - 1) / max(probes - 1, 1))) for k in range(probes)}
    ):
      try:
        np.asarray(source[i]["image"])
      except Exception as e:  # PIL, TFDS and array_record raise many kinds.
        problems.append(
            f"{name} record {i} does not decode " f"({type(e).__name__}: {e})"
        )
        break
  if problems:
    raise CorruptDataError(
        f"the prepared shapes data at {builder.data_dir} is corrupt: "
        f"{'; '.join(problems)}. Delete that directory and run the same "
        "command again to re-prepare it (or prepare into another data_dir)"
    )


def _count_records(path: str) -> int | str:
  """Records in one ArrayRecord file (read from its footer, not scanned)."""
  from array_record.python import array_record_module

  if not os.path.exists(path):
    return "no"
  try:
    reader = array_record_module.ArrayRecordReader(path)
  except Exception:  # A file too damaged to open holds no usable record.
    return 0
  try:
    return reader.num_records()
  finally:
    try:
      reader.close()
    except RuntimeError:  # Closing a reader of a damaged file fails too.
      pass


def prepare(
    data_dir: str,
    seed: int = 0,
    image_size: int = 32,
    num_train: int = 20_000,
    num_test: int = 1_000,
    num_heldout: int = 1_000,
    jitter_px: float = 1.0,
) -> CaptionedShapes:
  """Returns the builder, generating the records first if they are absent.

  Safe to call twice: a prepared config is reused, never regenerated. On a
  pod, give each host a local `data_dir` (generation is deterministic), or let
  one host prepare a shared dir before the others call this. A bucket's
  `data_dir` is read from a local copy (module doc): the builder returned
  then reads local files.
  """
  config = make_config(
      seed, image_size, num_train, num_test, num_heldout, jitter_px
  )
  data_dir = os.fspath(data_dir)
  if paths.is_remote(data_dir):
    return _prepare_remote(data_dir, config)
  return _prepare_local(data_dir, config)


def _prepare_remote(data_dir: str, config: ShapesConfig) -> CaptionedShapes:
  """`prepare` into a bucket's data dir, through its local copy."""
  local_dir = staging.local_dir(data_dir, _STAGE_KEY)
  builder = CaptionedShapes(
      data_dir=local_dir, config=config, file_format=_FILE_FORMAT
  )
  # The set's own dir, <data dir>/captioned_shapes/<config>/<version>.
  rel = os.path.relpath(builder.data_dir, local_dir).split(os.sep)
  remote = paths.join(data_dir, *rel)
  if paths.isfile(paths.join(remote, _INFO_FILE)):
    staging.stage_files(remote, _STAGE_KEY, last=(_INFO_FILE,))
    builder = _prepared_builder(local_dir, config)
    if builder is None:
      raise CorruptDataError(
          f"the shapes data at {remote} could not be read from its local "
          f"copy in {local_dir}"
      )
    verify(builder)
    logging.info(
        "Shapes data %s already prepared at %s; reading its copy in %s.",
        config.name,
        remote,
        builder.data_dir,
    )
    return builder
  _check_writable(data_dir)
  builder = _prepare_local(local_dir, config)
  logging.info("Uploading shapes data %s to %s.", config.name, remote)
  staging.upload_files(str(builder.data_dir), remote, last=(_INFO_FILE,))
  return builder


def _prepare_local(data_dir: str, config: ShapesConfig) -> CaptionedShapes:
  """`prepare` into a local data dir."""
  builder = _prepared_builder(data_dir, config)
  if builder is not None:
    verify(builder)
    logging.info(
        "Shapes data %s already prepared at %s; reusing it.",
        config.name,
        builder.data_dir,
    )
    return builder
  _check_writable(data_dir)
  with _preparing(data_dir, config.name):
    # Another process may have prepared it while this one waited.
    builder = _prepared_builder(data_dir, config)
    if builder is not None:
      verify(builder)
      logging.info(
          "Shapes data %s was prepared by another process; reusing it.",
          config.name,
      )
      return builder
    builder = CaptionedShapes(
        data_dir=data_dir, config=config, file_format=_FILE_FORMAT
    )
    logging.info(
        "Preparing shapes data %s at %s ...", config.name, builder.data_dir
    )
    start = time.perf_counter()
    tfds.disable_progress_bar()  # One log line per split reads better.
    builder.download_and_prepare(file_format=_FILE_FORMAT)
    logging.info(
        "Prepared shapes data %s in %.1f s (%d/%d/%d examples).",
        config.name,
        time.perf_counter() - start,
        config.num_train,
        config.num_test,
        config.num_heldout,
    )
  return builder


def _prepared_builder(data_dir: str, config) -> CaptionedShapes | None:
  """The builder of complete records, or None if they are not there yet.

  A builder reads what the records hold (their splits) when it is made: one
  made while another process was still writing them holds no splits, even
  once they are complete, so a builder is made again after the check.
  """
  builder = CaptionedShapes(
      data_dir=data_dir, config=config, file_format=_FILE_FORMAT
  )
  if not builder.is_prepared():
    return None
  if not builder.info.splits:
    builder = CaptionedShapes(
        data_dir=data_dir, config=config, file_format=_FILE_FORMAT
    )
  return builder


@contextlib.contextmanager
def _preparing(data_dir: str, name: str):
  """One process at a time prepares a config in a local data dir: two runs
  started together on a fresh machine would otherwise both write the same
  records and the second one's final rename would fail. Always local: a
  bucket's data dir is generated in its local copy (module doc), and a
  bucket has no file locks."""
  # The lock file is local by construction; flock needs a local file.
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
