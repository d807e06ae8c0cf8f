"""Writing chunks of prepared data: decode their images (in threads, the
next chunk's while this one is encoded), run the frozen encoders on them,
write each as one ArrayRecord shard under a temporary name and rename it
(into a bucket: write it locally and upload it under its final name, see
`staging.py`); `records_prepare.prepare` decides the chunks."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Callable, Mapping

from array_record.python import array_record_module
import numpy as np

from txt2img_jax.data import inputs
from txt2img_jax.data import records
from txt2img_jax.data import staging
from txt2img_jax.utils import paths

WRITER_OPTIONS = "group_size:1,uncompressed"


Featurize = Callable[[np.ndarray, list], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Options:
  image_size: int
  background: tuple[int, int, int]
  min_side: int
  max_pixels: int
  max_caption_words: int | None
  # Longer captions are cut to this many characters (counted): a 1 MB
  # "caption" is a broken metadata cell, not text for the model.
  cut_caption_chars: int | None = None


def load_one(source, cand: inputs.Candidate, opts: Options):
  """(uint8 image or None, captions, issues) for one candidate; never raises
  for a bad input."""
  issues = []
  im = None
  try:
    im, captions = source.read(cand)
    captions = inputs.normalize_captions(captions)
    if not captions:
      raise inputs.BadInput(inputs.EMPTY_CAPTION, "")  # The reason says it all.
    image = inputs.prepare_image(
        im,
        opts.image_size,
        background=opts.background,
        min_side=opts.min_side,
        max_pixels=opts.max_pixels,
    )
  except inputs.BadInput as e:
    return None, [], [inputs.Issue(e.reason, cand.key, cand.line, str(e))]
  finally:
    if im is not None:
      im.close()
  cut = opts.cut_caption_chars
  if cut and any(len(c) > cut for c in captions):
    longest = max(len(c) for c in captions)
    captions = [c[:cut] for c in captions]
    issues.append(
        inputs.Issue(
            inputs.CAPTION_CUT,
            cand.key,
            cand.line,
            f"{longest} characters, cut to {cut} (data.max_caption_chars)",
        )
    )
  if any(
      inputs.is_long_caption(c, None, opts.max_caption_words) for c in captions
  ):
    issues.append(inputs.Issue(inputs.LONG_CAPTION, cand.key, cand.line))
  return image, captions, issues


def atomic_write_json(path: str, obj: Any) -> None:
  """Whole or not at all, after a kill or (locally) a crash."""
  text = json.dumps(obj, indent=1, sort_keys=True)
  if paths.is_remote(path):
    paths.write_text(path, text)  # One upload: the object is whole or absent.
    return
  # A local file, synced before its rename (paths.write_text is not): a
  # machine's crash must not leave an empty chunk record.
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def run_featurize(
    featurize: Featurize, images: np.ndarray, captions: list[list[str]]
) -> dict[str, np.ndarray]:
  out = featurize(images, captions)
  if not isinstance(out, Mapping):
    raise TypeError(
        f"featurize must return a dict of arrays, got " f"{type(out).__name__}."
    )
  result = {}
  for name, arr in out.items():
    arr = np.asarray(arr)
    if name in records.RESERVED_KEYS:
      raise ValueError(
          f"featurize output {name!r} clashes with a record "
          f"field ({sorted(records.RESERVED_KEYS)}); rename it."
      )
    if arr.ndim == 0 or arr.shape[0] != len(images):
      raise ValueError(
          f"featurize output {name!r} has shape {arr.shape}; "
          f"it needs a leading batch dim of {len(images)}."
      )
    result[name] = arr
  return result


def write_chunk(
    chunk, futures, out_dir, json_path, featurize, featurize_batch_size, bar
) -> None:
  split, k, n, members = chunk
  images, captions, issues, kept = [], [], [], []
  for cand, fut in zip(members, futures):
    image, caps, its = fut.result()
    issues += its
    if image is not None:
      images.append(image)
      captions.append(caps)
      kept.append(cand)
    bar.update(1)
  # A featurizer with per-caption outputs has room for `max_captions`: the
  # record keeps those captions only, so the one drawn always has features.
  limit = getattr(featurize, "max_captions", None)
  dropped = 0
  if limit is not None:
    dropped = sum(max(0, len(c) - limit) for c in captions)
    captions = [c[:limit] for c in captions]
  extras: dict[str, np.ndarray] = {}
  if featurize is not None and images:
    parts = collections.defaultdict(list)
    for s in range(0, len(images), featurize_batch_size):
      out = run_featurize(
          featurize,
          np.stack(images[s : s + featurize_batch_size]),
          captions[s : s + featurize_batch_size],
      )
      for name, arr in out.items():
        parts[name].append(arr)
    extras = {name: np.concatenate(p) for name, p in parts.items()}
  shard = f"{split}-{k:05d}-of-{n:05d}.array_record"
  path = paths.join(out_dir, shard)
  nbytes = 0
  if kept:
    # ArrayRecord's writer takes local files only: a bucket's shard is
    # written in the stage dir and uploaded whole under its final name.
    remote = paths.is_remote(path)
    tmp = staging.scratch_file(".array_record") if remote else path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for j, cand in enumerate(kept):
      writer.write(
          records.encode_record(
              images[j],
              captions[j],
              cand.index,
              cand.key,
              {name: arr[j] for name, arr in extras.items()},
          )
      )
    writer.close()
    nbytes = os.path.getsize(tmp)  # Local either way.
    if remote:
      try:
        staging.upload(tmp, path)
      finally:
        os.remove(tmp)
    else:
      os.replace(tmp, path)
  spec = {
      name: {"dtype": arr.dtype.str, "shape": list(arr.shape[1:])}
      for name, arr in extras.items()
  }
  atomic_write_json(
      json_path,
      {
          "split": split,
          "chunk": k,
          "shard": shard if kept else None,
          "num_records": len(kept),
          "bytes": nbytes,
          "extras": spec,
          "captions_dropped": dropped,
          "issues": [[i.reason, i.path, i.line, i.detail] for i in issues],
      },
  )


def write_chunks(
    source,
    chunks,
    opts,
    out_dir,
    chunk_json,
    featurize,
    featurize_batch_size,
    bar,
    num_workers,
) -> None:
  """Decodes the next chunk in threads while this one is featurized and
  written."""
  workers = num_workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:

    def submit(chunk):
      return [pool.submit(load_one, source, c, opts) for c in chunk[3]]

    futures = []
    try:
      futures = submit(chunks[0]) if chunks else []
      for i, chunk in enumerate(chunks):
        nxt = submit(chunks[i + 1]) if i + 1 < len(chunks) else []
        write_chunk(
            chunk,
            futures,
            out_dir,
            chunk_json(chunk[0], chunk[1]),
            featurize,
            featurize_batch_size,
            bar,
        )
        futures = nxt
    except BaseException:
      for f in futures:
        f.cancel()
      raise
