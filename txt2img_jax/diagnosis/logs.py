"""Reads a run's logs: `W/metrics.jsonl` as one series per metric, and
`W/config.json` as a dict.

Defines the `Metrics` the rest of the diagnosis reads. Imports neither jax
nor the model, so it runs anywhere the logs are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles

Series = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted by step.
Metrics = dict[str, Series]


class MetricsNotFoundError(FileNotFoundError):
  pass


def load_metrics(workdir: str) -> Metrics:
  """Reads W/metrics.jsonl into {name: (steps, values)}.

  A step logged twice (a run resumed from a checkpoint older than its last log line) keeps its
  latest value: that is the history the current run has. A torn last line (a run killed
  mid-write) is dropped with a warning; a broken line elsewhere is an error (see runfiles).
  """
  path = runfiles.metrics_path(workdir)
  if not paths.exists(path):
    raise MetricsNotFoundError(
        f"no metrics.jsonl in {workdir!r}: is this a txt2img_jax workdir, and has the run "
        "logged its first step?"
    )
  by_name: dict[str, dict[int, float]] = {}
  for record in runfiles.read_metrics(workdir):
    step = int(record["step"])
    for name, value in record.items():
      if name == "step" or isinstance(value, bool):
        continue
      try:
        by_name.setdefault(name, {})[step] = float(value)
      except (TypeError, ValueError):
        continue
  metrics = {}
  for name, points in by_name.items():
    steps = np.array(sorted(points), dtype=np.int64)
    metrics[name] = (
        steps,
        np.array([points[s] for s in steps], dtype=np.float64),
    )
  return metrics


def load_config(workdir: str) -> dict[str, Any]:
  """W/config.json as a dict; {} when absent (the LR and KL-per-dim checks are then skipped)."""
  if not paths.exists(paths.join(workdir, runfiles.CONFIG_FILE)):
    return {}
  return runfiles.read_json(workdir, runfiles.CONFIG_FILE)


def count_lines(workdir: str) -> int:
  return len(runfiles.read_metrics(workdir))
