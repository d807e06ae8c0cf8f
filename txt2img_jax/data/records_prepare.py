"""Writes prepared data: a user's source turned once into ArrayRecord shards.

`prepare(source, out_dir, ...)` decodes every image of a source (an
`imagefolder.ImageFolderSource` or a `tfds_source.TfdsSource`) to uint8
(S, S, 3), optionally runs frozen encoders on it (`featurize`), and writes

    out_dir/fingerprint.json     what the records depend on (written first)
    out_dir/train-00000-of-00003.array_record, ..., val-00000-of-00001...
    out_dir/.chunks/train-00000.json   one per finished shard (resume state)
    out_dir/prepare_report.json  every bad input, counted by reason
    out_dir/manifest.json        written last: its presence means complete

The record format and the reader are in `records.py`, one chunk's writing in
`records_write.py`, the report, progress line and final merge in
`records_report.py`, the hosts in `records_hosts.py`. Shards are written uncompressed with
group_size 1 (fastest random reads; compression gains nothing on pixels).

Resumability: each split is cut into fixed chunks of `chunk_size` listed
examples, decided before any image is read. A chunk becomes one shard,
written under a temporary name, renamed, then recorded in `.chunks/`. A rerun
skips recorded chunks and redoes any other, so a record is never written
twice and an interrupted run ends with the same records as a clean one.

On several hosts (`records_hosts.Hosts`, given by the trainer from JAX's multi-process
runtime) every host lists the same inputs and plans the same chunks; host i
decodes, featurizes and writes chunks i, i + P, i + 2P, ... and host 0, once
all are written, merges their `.chunks/` entries into the report and the
manifest. A chunk is written whole by one host, so the records do not depend
on the number of hosts. This needs the output dir shared by the hosts (a
bucket or a shared filesystem); where it is not (each host's own disk), each
host prepares its own full copy instead, as one host would.

`out_dir` may be a bucket URL (`gs://...`): the files above are written
through `utils/paths`, the shards written locally and uploaded whole under
their names (`staging.py`). Preparing takes no lock (on a local disk
neither): the hosts of one run share the work as above, but two unrelated
runs preparing the same dir at once are not protected from each other.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import sys
import time
from typing import Any, Mapping, Sequence


from txt2img_jax.data import inputs
from txt2img_jax.data import records
from txt2img_jax.data import records_hosts
from txt2img_jax.data import records_report
from txt2img_jax.data import records_write
from txt2img_jax.data import staging
from txt2img_jax.utils import paths


def _normal(obj: Any) -> Any:
  return json.loads(json.dumps(obj, sort_keys=True))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]


def _clear(out_dir: str) -> None:
  """Removes what `prepare` writes (and nothing else) from out_dir."""
  for pattern in (
      "*.array_record",
      "*.array_record.tmp",
      "*.json.tmp",
      records.MANIFEST,
      records.FINGERPRINT,
      records.REPORT,
      records_hosts.HOSTS_TOKEN,
  ):
    for path in _matching(out_dir, pattern):
      paths.remove(path)
  paths.rmtree(paths.join(out_dir, records.CHUNKS_DIR))


def _matching(out_dir: str, pattern: str) -> list[str]:
  """The files at the top of out_dir whose names match `pattern` (a name
  pattern: out_dir's own path may hold any character)."""
  if not paths.isdir(out_dir):
    return []
  return [
      paths.join(out_dir, n)
      for n in paths.listdir(out_dir)
      if fnmatch.fnmatchcase(n, pattern)
  ]


def _check_writable(out_dir: str) -> None:
  try:
    staging.probe_writable(out_dir)
  except OSError as e:
    raise PermissionError(
        f"Output dir {out_dir!r} is not writable ({e.strerror or e}); pick "
        "another one for the prepared data."
    ) from e


def assign_splits(
    cands: list[inputs.Candidate], val_fraction: float, val_count: int | None
) -> dict[str, list[inputs.Candidate]]:
  free = [c for c in cands if c.split is None]
  if val_count is not None:
    by_hash = sorted(free, key=lambda c: (inputs.key_unit(c.key), c.key))
    val_keys = {c.key for c in by_hash[:val_count]}
  else:
    val_keys = {c.key for c in free if inputs.key_unit(c.key) < val_fraction}
  out = {s: [] for s in records.SPLITS}
  for c in cands:  # Source order within each split.
    split = (
        c.split
        if c.split is not None
        else ("val" if c.key in val_keys else "train")
    )
    if split not in out:
      raise ValueError(
          f"Unknown split {split!r} for {c.key!r}; the prepared "
          f"splits are {records.SPLITS}."
      )
    out[split].append(c)
  return out


def prepare(
    source,
    out_dir: str,
    *,
    image_size: int,
    fingerprint: Mapping[str, Any] | None = None,
    featurize: records_write.Featurize | None = None,
    rebuild: bool = False,
    val_fraction: float = 0.01,
    val_count: int | None = None,
    background: Sequence[int] = (255, 255, 255),
    min_side: int | None = None,
    max_pixels: int = inputs.DEFAULT_MAX_PIXELS,
    max_caption_chars: int | None = None,
    max_caption_words: int | None = None,
    chunk_size: int = 1024,
    num_workers: int | None = None,
    featurize_batch_size: int = 64,
    progress: bool = True,
    report_first: int = 5,
    hosts: records_hosts.Hosts = records_hosts.ONE_HOST,
) -> dict[str, Any]:
  """Prepares `source` into `out_dir` once; returns the report.

  Calling it again on complete data with the same settings does nothing but
  list the source and check the fingerprint. Any change in what the records
  depend on (the source's files, these settings, the caller's `fingerprint`
  of its encoders) raises, or with `rebuild=True` starts over.

  Args:
    source: an ImageFolderSource or TfdsSource.
    out_dir: where the shards go.
    image_size: S; images are resized on the shorter side and centre-cropped.
    fingerprint: the caller's identity of what `featurize` computes (encoder
      names, weight hashes, max_len, ...); JSON-serialisable. Required with
      `featurize`.
    featurize: (uint8 (B, S, S, 3), list of B caption lists) -> {name: array
      with leading dim B}; each example's slice is stored in its record. If
      it has `max_captions`, records keep that many captions at most (the
      rest are counted in the report's `captions_dropped`).
    rebuild: discard what out_dir holds and prepare from scratch.
    val_fraction: the share of keys (by a stable hash) held out as `val`.
    val_count: if set, exactly this many listed keys (the lowest hashes) are
      `val` instead. Sources that name their splits (TFDS) ignore both.
    background: RGB that transparent pixels are composited on.
    min_side: smaller images are skipped; default image_size // 2.
    max_pixels: images with more pixels are skipped without decoding.
    max_caption_chars: longer captions are cut to this many characters and
      counted (`caption_cut`).
    max_caption_words: captions with more words are counted (kept whole).
    chunk_size: listed examples per shard; the unit of resumption.
    num_workers: decoding threads (default: the CPU count).
    featurize_batch_size: examples per featurize call.
    progress: print count, rate and ETA to stderr.
    report_first: offending inputs listed per reason in the report.
    hosts: the processes preparing together (module docstring); each calls
      `prepare` with the same arguments and its own `hosts.index`.
  """
  arguments = dict(locals())
  out_dir = paths.abspath(out_dir)
  if featurize is not None and not fingerprint:
    raise ValueError(
        "prepare(featurize=...) needs a `fingerprint` naming the "
        "encoders and their weights, so a changed encoder is "
        "never read from a stale cache."
    )
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
  opts = records_write.Options(
      image_size=int(image_size),
      background=tuple(int(c) for c in background),
      min_side=int(image_size) // 2 if min_side is None else int(min_side),
      max_pixels=int(max_pixels),
      max_caption_words=max_caption_words,
      cut_caption_chars=max_caption_chars,
  )
  full_fp = _normal(
      {
          "format_version": records.FORMAT_VERSION,
          "source": source.fingerprint(),
          "prepare": {
              **dataclasses.asdict(opts),
              "crop": "center",
              "resample": "bicubic",
              "val_fraction": val_fraction,
              "val_count": val_count,
              "chunk_size": chunk_size,
          },
          "featurize": dict(fingerprint or {}),
          "featurized": featurize is not None,
      }
  )

  fp_path = paths.join(out_dir, records.FINGERPRINT)
  complete = False
  if paths.exists(fp_path) and not rebuild:
    stored = json.loads(paths.read_text(fp_path))
    if stored != full_fp:
      raise ValueError(
          f"{out_dir!r} was prepared with other settings (differs in: "
          f"{', '.join(_diff_keys(stored, full_fp))}); prepare again with "
          "rebuild=True, or use another output dir."
      )
    complete = paths.exists(paths.join(out_dir, records.MANIFEST))
  if hosts.count == 1 and complete:
    return records_report.reuse(out_dir, progress)
  if hosts.count > 1 and all(hosts.gather(int(complete))):
    return records_report.reuse(
        out_dir, progress
    )  # Before listing: nothing to do.

  report = records_report.Report(report_first)
  for issue in source.issues:
    report.add(issue)
  cands = list(source.candidates)
  if not cands:
    raise ValueError(
        f"No usable examples in {source.describe()}: "
        f"{sum(report.counts.values())} problems found while listing "
        f"({dict(report.counts) or 'nothing listed'})."
    )

  start = time.perf_counter()
  if hosts.index == 0 and not complete:
    _set_up(out_dir, rebuild, fp_path, full_fp)

  plan = []  # (split, chunk number, shard count, candidates)
  for split, members in assign_splits(cands, val_fraction, val_count).items():
    n = -(-len(members) // chunk_size)
    for k in range(n):
      plan.append((split, k, n, members[k * chunk_size : (k + 1) * chunk_size]))

  def chunk_json(split, k):
    return paths.join(out_dir, records.CHUNKS_DIR, f"{split}-{k:05d}.json")

  def unwritten():
    return [
        (i, p)
        for i, p in enumerate(plan)
        if not paths.exists(chunk_json(p[0], p[1]))
    ]

  if hosts.count > 1:
    paths.makedirs(out_dir)
    # After host 0's set-up (a rebuild's clearing) and before any host
    # writes a chunk (after the sync): every host sees the same.
    shared = records_hosts.shared_dir(out_dir, hosts)
    todo = unwritten()
    hosts.sync("prepare_planned")
    if not shared:
      # Each host's own disk: each prepares its own copy, alone.
      if complete:
        return records_report.reuse(out_dir, progress)
      if progress:
        print(
            f"prepare: host {hosts.index}: {out_dir} is not shared with "
            "the other hosts; preparing a copy of all of it here.",
            file=sys.stderr,
        )
      return prepare(**{**arguments, "hosts": records_hosts.ONE_HOST})
  else:
    todo = unwritten()
  processed = sum(len(p[3]) for _, p in todo)
  mine = [p for i, p in todo if i % hosts.count == hosts.index]
  # Several hosts: each counts its own share.
  done = len(cands) - processed if hosts.count == 1 else 0
  bar = records_report.Progress(
      done + sum(len(p[3]) for p in mine), done, progress
  )
  records_write.write_chunks(
      source,
      mine,
      opts,
      out_dir,
      chunk_json,
      featurize,
      featurize_batch_size,
      bar,
      num_workers,
  )
  bar.close()
  finish = functools.partial(
      records_report.finish,
      out_dir,
      plan,
      chunk_json,
      report,
      full_fp,
      start,
      len(cands),
      processed,
      progress,
  )
  if hosts.count == 1:
    return finish()
  hosts.sync("prepare_chunks_written")
  error = None
  if hosts.index == 0:
    try:
      finish()
    except (OSError, ValueError) as e:
      error = e
  finished = hosts.gather(int(error is None))[0]
  if error is not None:
    raise error
  if not finished:
    raise ValueError(
        f"host 0 could not merge the prepared chunks in {out_dir}; "
        "see its log."
    )
  return json.loads(paths.read_text(paths.join(out_dir, records.REPORT)))


def _set_up(out_dir: str, rebuild: bool, fp_path: str, full_fp) -> None:
  """Before any chunk: a writable dir, no stale temporaries, the
  fingerprint."""
  _check_writable(out_dir)
  if rebuild:
    _clear(out_dir)
  for stale in _matching(out_dir, "*.tmp"):
    paths.remove(stale)  # Left by a killed run; never part of the data.
  paths.makedirs(paths.join(out_dir, records.CHUNKS_DIR))
  if not paths.exists(fp_path):
    records_write.atomic_write_json(fp_path, full_fp)
