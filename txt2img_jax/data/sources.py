"""Data sources, by `config.data.name`: one registry line each.

`prepare(config)` returns the data set the input pipeline reads (see
`pipeline.py` for what it must offer), preparing it first if needed:
- `shapes`: the embedded captioned-shapes set (TFDS, generated here);
- `folder`: a user's image folder (Hugging Face `imagefolder` layout:
  images + metadata.jsonl/.csv with `file_name` and a caption column);
- `tfds`: a user's TFDS data set with an image and a text feature;
- `webdataset`: tar shards of image + caption members (img2dataset's output).
The last three go through `records_prepare.prepare` once: ArrayRecord shards
under the data dir, a report of every bad input, and (for a KL-VAE latent
space) the VAE moments cached next to each image, so training never runs the
frozen encoder.

Any of these paths (the data dir, data.path) may be a bucket URL
(`gs://...`): `staging.py` says how a data dir in a bucket is read, written
and (not) locked.

Each source's modules (TFDS, grain, ArrayRecord) are imported when that source
is prepared, not when this module is: the registry and `validate` are all
that model-side code (`perf`, `sample`) reaches, and they need none of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from absl import logging

from txt2img_jax.utils import paths


def _user_path(path: str) -> str:
  """A path as typed, `~` expanded (a bucket URL as it is)."""
  return path if paths.is_remote(path) else os.path.expanduser(path)


def data_dir(config) -> str:
  if config.data.data_dir:
    return _user_path(config.data.data_dir)
  return os.environ.get(
      "TXT2IMG_DATA_DIR", os.path.expanduser("~/.cache/txt2img_jax/data")
  )


def _shapes(config, featurizer=None):
  from txt2img_jax.data import tfds_shapes

  del featurizer  # The shapes set is small: encoders run in the step.
  d = config.data
  return tfds_shapes.prepare(
      data_dir(config),
      seed=d.seed,
      image_size=d.image_size,
      num_train=d.num_train,
      num_test=d.num_test,
      num_heldout=d.num_heldout,
      jitter_px=d.jitter_px,
  )


def _folder_source(config):
  from txt2img_jax.data import imagefolder

  if not config.data.path:
    raise ValueError(
        "data.name='folder' needs data.path: a folder of images "
        "with metadata.jsonl or metadata.csv"
    )
  return imagefolder.ImageFolderSource(
      _user_path(config.data.path),
      config.data.caption_column,
      follow_symlinks=config.data.follow_symlinks,
  )


def _tfds_source(config):
  from txt2img_jax.data import tfds_source

  d = config.data
  if not d.tfds_name:
    raise ValueError("data.name='tfds' needs data.tfds_name")
  return tfds_source.TfdsSource(
      d.tfds_name,
      data_dir=d.tfds_data_dir or None,
      image_key=d.image_key,
      caption_key=d.caption_key,
      train_split=d.train_split,
      val_split=d.val_split or None,
  )


def _webdataset_source(config):
  from txt2img_jax.data import webdataset

  d = config.data
  return webdataset.WebDatasetSource(
      d.path, image_keys=d.wds_image_keys, caption_key=d.wds_caption_key
  )


def _source_path(d) -> str:
  """What names the user's data in the prepared directory's hash."""
  if d.name == "folder":
    return paths.abspath(d.path)
  if d.name == "webdataset":
    return paths.join(
        paths.abspath(paths.dirname(_user_path(d.path))),
        paths.basename(d.path),
    )
  return d.tfds_name


def _source_base(d) -> str:
  if d.name == "folder":
    if paths.is_remote(d.path):
      return paths.basename(d.path)
    return os.path.basename(os.path.normpath(d.path))
  if d.name == "webdataset":
    parent = paths.basename(paths.dirname(_user_path(d.path)))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", parent) or "shards"
  return d.tfds_name.replace("/", "_")


def prepared_dir(config, featurizer=None, kind: str = "prepared") -> str:
  """Where a user's data is prepared: named by what the records depend on,
  so another image size or encoder never reuses the wrong records (`kind`
  "streamed": where streamed shards keep what the run caches)."""
  d = config.data
  what = {
      "name": d.name,
      "path": _source_path(d),
      "image_size": d.image_size,
      "max_caption_chars": d.max_caption_chars,
      "features": featurizer.fingerprint if featurizer else None,
  }
  digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()
  base = _source_base(d)
  return paths.join(
      data_dir(config),
      kind,
      f"{d.name}_{base}_s{d.image_size}_{digest[:10]}",
  )


def _prepare_records(make_source):
  def prepare(config, featurizer=None, hosts=None):
    from txt2img_jax.data import prepared
    from txt2img_jax.data import records
    from txt2img_jax.data import records_hosts
    from txt2img_jax.data import records_prepare

    d = config.data
    out_dir = prepared_dir(config, featurizer)
    if not paths.exists(paths.join(out_dir, records.MANIFEST)) or (d.rebuild):
      logging.info("preparing %s data into %s", d.name, out_dir)
    report = records_prepare.prepare(
        make_source(config),
        out_dir,
        image_size=d.image_size,
        fingerprint=featurizer.fingerprint if featurizer else None,
        featurize=featurizer,
        rebuild=d.rebuild,
        val_fraction=d.val_fraction,
        val_count=d.val_count or None,
        background=tuple(d.background),
        min_side=d.min_side or None,
        max_pixels=d.max_pixels,
        max_caption_words=d.max_len,
        max_caption_chars=d.max_caption_chars or None,
        num_workers=d.prepare_workers or None,
        hosts=hosts or records_hosts.ONE_HOST,
    )
    return prepared.PreparedData(out_dir, report)

  return prepare


def _webdataset(config, featurizer=None, hosts=None):
  """Prepared once like a folder, or (data.stream) read during training."""
  if not config.data.stream:
    return _prepare_records(_webdataset_source)(config, featurizer, hosts)
  from txt2img_jax.data import records_prepare
  from txt2img_jax.data import records_write
  from txt2img_jax.data import webdataset

  d = config.data
  source = _webdataset_source(config)
  if not source.candidates:
    raise ValueError(
        f"No usable samples in {source.describe()} "
        f"({len(source.issues)} problems found while listing)"
    )
  splits = records_prepare.assign_splits(
      source.candidates, d.val_fraction, d.val_count or None
  )
  opts = records_write.Options(
      image_size=d.image_size,
      background=tuple(d.background),
      min_side=d.min_side or d.image_size // 2,
      max_pixels=d.max_pixels,
      max_caption_words=d.max_len,
      cut_caption_chars=d.max_caption_chars or None,
  )
  out_dir = prepared_dir(config, kind="streamed")
  logging.info(
      "streaming %d train + %d val samples from %s (%d listing problems)",
      len(splits["train"]),
      len(splits["val"]),
      source.describe(),
      len(source.issues),
  )
  return webdataset.StreamedShards(source, out_dir, opts, splits)


REGISTRY = {
    "shapes": _shapes,
    "folder": _prepare_records(_folder_source),
    "tfds": _prepare_records(_tfds_source),
    "webdataset": _webdataset,
}


def every_host_prepares(config) -> bool:
  """Whether the hosts of a multi-process run prepare the data together
  (`records_hosts.Hosts`): the sources written into records; the others
  are prepared by host 0 first."""
  d = config.data
  return d.name in ("folder", "tfds") or (
      d.name == "webdataset" and not d.stream
  )


def prepare(config, featurizer=None, hosts=None):
  """The configured data set, prepared once (later calls reuse it); `hosts`
  (`records_hosts.Hosts`) where `every_host_prepares(config)`."""
  name = config.data.name
  if name not in REGISTRY:
    raise ValueError(f"data.name={name!r}: expected one of {sorted(REGISTRY)}")
  if hosts is not None:
    if not every_host_prepares(config):
      raise ValueError(f"data.name={name!r} is prepared by one host")
    return REGISTRY[name](config, featurizer, hosts)
  return REGISTRY[name](config, featurizer)


def validate(config) -> None:
  """The data settings that can be checked before anything is written."""
  d = config.data
  if d.name not in REGISTRY:
    raise ValueError(
        f"data.name={d.name!r}: expected one of {sorted(REGISTRY)}"
    )
  if d.name == "folder":
    if not d.path:
      raise ValueError(
          "data.name='folder' needs data.path: a folder of "
          "images with metadata.jsonl or metadata.csv"
      )
    if not paths.isdir(_user_path(d.path)):
      raise FileNotFoundError(f"data.path={d.path!r} is not a folder")
  if d.name == "webdataset":
    from txt2img_jax.data import webdataset

    webdataset.shard_paths(d.path)  # One line if it names no shard.
  if d.name == "tfds" and not d.tfds_name:
    raise ValueError("data.name='tfds' needs data.tfds_name")
