"""The run's metrics file, `<workdir>/metrics.jsonl`: one JSON object a line.

Every writer and reader of the file goes through here, so they agree on what
a damaged file means. A kill in the middle of a write leaves a torn last line
(no newline, half an object): that line is dropped with a warning, since the
step it held is written again when the run resumes. A line that does not
parse anywhere else was not made by a kill, so it is an error that names the
line.

The workdir may be a bucket URL (`gs://...`): every file goes through
`utils/paths.py`. A bucket has no append, so a row added there rewrites
the object (metrics files are small), and a bucket write is whole, so only
a local file can be torn.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from absl import logging

from txt2img_jax.utils import paths

METRICS_FILE = "metrics.jsonl"
# Marks a row the `evaluate` command added: a checkpoint scored again, not a
# step of the training's own series (so not out of order).
RESCORED = "rescored"


class CorruptMetricsError(ValueError):
  """metrics.jsonl has a broken line that a kill cannot have left."""


def metrics_path(workdir: str) -> str:
  return paths.join(workdir, METRICS_FILE)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of W/metrics.jsonl, in file order ([] when there is none)."""
  path = metrics_path(workdir)
  if not paths.exists(path):
    return []
  lines = paths.read_bytes(path).split(b"\n")
  rows = []
  last = max((i for i, l in enumerate(lines) if l.strip()), default=-1)
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or "step" not in row:
        raise ValueError("not an object with a 'step'")
    except ValueError as e:
      if i == last:
        logging.warning(
            "%s: dropped its last line, cut off in mid-write (a "
            "kill or crash while logging): %r",
            path,
            _preview(line),
        )
        break
      raise CorruptMetricsError(
          f"{path}, line {i + 1} is not a metrics row ({e}): "
          f"{_preview(line)!r}. The file is damaged in the middle, not by a "
          "kill; fix or delete that line"
      ) from None
    rows.append(row)
  return rows


def out_of_order(rows: list[dict[str, Any]]) -> list[tuple[int, str, int, int]]:
  """(row number, metric, step, the step logged before it) for each value
  whose step is not after the metric's previous one in the file: what two
  runs writing one workdir leave (a resumed run never does, it truncates
  the rows past its checkpoint). Rows of other metrics (an evaluation's
  row at a train step) may share a step."""
  last: dict[str, int] = {}
  problems = []
  for i, row in enumerate(rows, start=1):
    step = row.get("step")
    if not isinstance(step, (int, float)) or row.get(RESCORED):
      continue
    for name in row:
      if name == "step":
        continue
      if name in last and step <= last[name]:
        problems.append((i, name, int(step), last[name]))
      last[name] = int(step)
  return problems


def _preview(line: bytes, n: int = 60) -> str:
  text = line.decode("utf-8", errors="replace")
  return text if len(text) <= n else text[:n] + "..."


def append_metrics(workdir: str, row: dict[str, Any]) -> None:
  """Adds one row (it must hold 'step'). Call on process 0 only.

  A torn last line is cut off first, or the new row would be glued to it and
  the damage would move into the middle of the file.
  """
  path = metrics_path(workdir)
  _drop_torn_tail(path)
  paths.append_text(path, json.dumps(row) + "\n")


def _drop_torn_tail(path: str) -> None:
  """Only the last byte is read unless the file is torn (then it is written
  again without its torn line, whole or not at all)."""
  if not paths.exists(path):
    return
  size = paths.getsize(path)
  if size == 0:
    return
  with paths.open(path, "rb") as f:
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
  data = paths.read_bytes(path)
  keep = data.rfind(b"\n") + 1
  logging.warning(
      "%s: cut off a torn last line before appending: %r",
      path,
      _preview(data[keep:]),
  )
  paths.write_bytes(path, data[:keep])


def write_metrics(workdir: str, rows: Iterable[dict[str, Any]]) -> None:
  """Replaces the file with `rows`; a kill meanwhile leaves the old file."""
  paths.write_text(
      metrics_path(workdir), "".join(json.dumps(row) + "\n" for row in rows)
  )


# --- The run's other files: config, latent statistics, word vocabulary. ------

CONFIG_FILE = "config.json"  # The run's config (run_config.load reads it).
STATS_FILE = "latent_stats.json"  # Per-channel latent shift and scale.
VOCAB_FILE = "vocab.json"  # The embedded text encoder's words.


def read_json(workdir: str, name: str) -> Any:
  """A run file; FileNotFoundError (one line) when the run has none."""
  path = paths.join(workdir, name)
  if not paths.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir!r} is not the workdir of a training run"
        if name == CONFIG_FILE
        else f"{path} not found"
    )
  return json.loads(paths.read_text(path))


def write_json(workdir: str, name: str, obj: Any, **kwargs) -> None:
  """Written whole or not at all (locally a temporary file renamed over it;
  a bucket object is replaced by one upload)."""
  paths.write_text(paths.join(workdir, name), json.dumps(obj, **kwargs))


def append_json_line(workdir: str, name: str, obj: Any) -> None:
  """Adds one JSON line to a run file (a history that is never rewritten;
  on a bucket the object is written again with the line added)."""
  paths.append_text(
      paths.join(workdir, name), json.dumps(obj, default=str) + "\n"
  )
