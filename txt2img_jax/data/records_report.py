"""What `records_prepare.prepare` tells the user: the bad-input report and
the progress line.

Every bad input is counted by reason (`imagefolder` names the reasons and
which of them keep the example); the first few of each reason are listed in
out_dir/prepare_report.json, and `summary_lines` is the short form printed
at the end.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Any

from txt2img_jax.data import inputs
from txt2img_jax.data import records

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
    path = os.path.join(report["output"], records.REPORT)
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
