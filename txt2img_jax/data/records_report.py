"""What `records_prepare.prepare` tells the user: the bad-input report, the
progress line, and at the end the merged report and the manifest.

Every bad input is counted by reason (`imagefolder` names the reasons and
which of them keep the example); the first few of each reason are listed in
out_dir/prepare_report.json, and `summary_lines` is the short form printed
at the end.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from typing import Any

from txt2img_jax.data import inputs
from txt2img_jax.data import records
from txt2img_jax.data import records_write
from txt2img_jax.utils import paths

# ------------------------------------------------------------------- report


class Report:
  """Counts by reason, with the first few offending inputs of each."""

  def __init__(self, keep: int = 5):
    self.keep = keep
    self.counts: collections.Counter = collections.Counter()
    self.first: dict[str, list[dict]] = collections.defaultdict(list)

  def add(self, issue: inputs.Issue) -> None:
    self.counts[issue.reason] += 1
    if len(self.first[issue.reason]) < self.keep:
      entry = {"path": issue.path}
      if issue.line is not None:
        entry["line"] = issue.line
      if issue.detail:
        entry["detail"] = issue.detail
      self.first[issue.reason].append(entry)

  def reasons(self) -> dict[str, dict[str, Any]]:
    out = {}
    for reason in sorted(self.counts):
      action = (
          "kept"
          if reason in inputs.KEPT_REASONS
          else "not used (no metadata row)"
          if reason in inputs.UNUSED_REASONS
          else "skipped"
      )
      out[reason] = {
          "count": self.counts[reason],
          "action": action,
          "first": self.first[reason],
      }
    return out

  def skipped(self) -> int:
    return sum(
        c
        for r, c in self.counts.items()
        if r not in inputs.KEPT_REASONS and r not in inputs.UNUSED_REASONS
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
  written = report["written"]
  lines = [
      f"prepare: {written['train']} train + {written['val']} val records "
      f"from {report['listed']} listed inputs in "
      f"{report['seconds']:.1f} s "
      f"({report['bytes_per_example']:.0f} bytes/example) -> "
      f"{report['output']}"
  ]
  if report["reasons"]:
    lines.append(
        "prepare: "
        + ", ".join(
            f"{r} {v['count']} ({v['action']})"
            for r, v in report["reasons"].items()
        )
    )
    path = paths.join(report["output"], records.REPORT)
    lines.append(f"prepare: details in {path}")
  return lines


class Progress:
  """count/total, rate and ETA on stderr: redrawn on a terminal, else a
  line every `interval` seconds."""

  def __init__(self, total: int, done: int, enabled: bool, stream=None):
    self.total, self.done, self.enabled = total, done, enabled
    self.stream = stream or sys.stderr
    self.tty = getattr(self.stream, "isatty", lambda: False)()
    self.interval = 0.2 if self.tty else 10.0
    self.start = time.perf_counter()
    self.start_done = done
    self.last = self.start  # The first line once there is a rate to show.

  def update(self, n: int, force: bool = False) -> None:
    self.done += n
    now = time.perf_counter()
    if not self.enabled or (not force and now - self.last < self.interval):
      return
    self.last = now
    rate = (self.done - self.start_done) / max(now - self.start, 1e-9)
    left = self.total - self.done
    eta = f"{left / rate:.0f} s" if rate > 0 else "?"
    pct = 100.0 * self.done / max(self.total, 1)
    msg = (
        f"prepare: {self.done}/{self.total} ({pct:.0f}%) "
        f"{rate:.1f} images/s, ETA {eta}"
    )
    self.stream.write(("\r" + msg + " " * 8) if self.tty else msg + "\n")
    self.stream.flush()

  def close(self) -> None:
    self.update(0, force=True)
    if self.enabled and self.tty:
      self.stream.write("\n")


def reuse(out_dir: str, progress: bool) -> dict[str, Any]:
  report = json.loads(paths.read_text(paths.join(out_dir, records.REPORT)))
  if progress:
    print(
        f"prepare: {out_dir} is already prepared and matches; reusing it.",
        file=sys.stderr,
    )
  return report


def finish(
    out_dir,
    plan,
    chunk_json,
    report,
    full_fp,
    start,
    listed,
    processed,
    progress,
) -> dict[str, Any]:
  splits = {
      s: {"num_records": 0, "shards": [], "bytes": 0} for s in records.SPLITS
  }
  extras = None
  dropped = 0
  for split, k, _, _ in plan:
    info = json.loads(paths.read_text(chunk_json(split, k)))
    dropped += info.get("captions_dropped", 0)
    for issue in info["issues"]:
      report.add(inputs.Issue(*issue))
    s = splits[split]
    s["num_records"] += info["num_records"]
    s["bytes"] += info["bytes"]
    if info["shard"]:
      s["shards"].append(info["shard"])
      if extras is None:
        extras = info["extras"]
      elif info["extras"] != extras:
        raise ValueError(
            f"featurize gave {info['extras']} for shard {info['shard']} but "
            f"{extras} before; its outputs must keep their shapes and dtypes."
        )
  total = sum(s["num_records"] for s in splits.values())
  total_bytes = sum(s["bytes"] for s in splits.values())
  seconds = time.perf_counter() - start
  result = {
      "output": out_dir,
      "listed": listed,
      "written": {s: v["num_records"] for s, v in splits.items()},
      "skipped": report.skipped(),
      "reasons": report.reasons(),
      "bytes_per_example": total_bytes / max(total, 1),
      # Captions past a per-caption cache's room (data.cache_captions).
      "captions_dropped": dropped,
      "total_bytes": total_bytes,
      "seconds": seconds,
      # Of this run only (a resumed run did part of the work before).
      "processed": processed,
      "images_per_s": processed / max(seconds, 1e-9),
  }
  records_write.atomic_write_json(paths.join(out_dir, records.REPORT), result)
  if total == 0:
    raise ValueError(
        f"No usable examples: all {listed} listed inputs were skipped "
        f"({dict(report.counts)}); see "
        f"{paths.join(out_dir, records.REPORT)}."
    )
  if progress:
    for line in summary_lines(result):
      print(line, file=sys.stderr)
  # Last: the manifest is what makes the directory count as prepared.
  records_write.atomic_write_json(
      paths.join(out_dir, records.MANIFEST),
      {
          "format_version": records.FORMAT_VERSION,
          "fingerprint": full_fp,
          "image_size": full_fp["prepare"]["image_size"],
          "splits": splits,
          "extras": extras or {},
      },
  )
  return result
