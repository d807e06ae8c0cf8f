"""What one metric's series says: its latest finite value, its points in the
window the diagnosis reads, the least-squares trend over that window, its
finite points with their lowest, and its value at given steps.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from txt2img_jax.diagnosis.logs import Metrics
from txt2img_jax.diagnosis.report import Trend
from txt2img_jax.diagnosis.thresholds import MIN_TREND_POINTS


def latest(metrics: Metrics, name: str) -> Optional[float]:
  if name not in metrics:
    return None
  values = metrics[name][1]
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else None


def window_values(metrics: Metrics, name: str, start_step: int) -> np.ndarray:
  steps, values = metrics.get(name, (np.zeros(0), np.zeros(0)))
  values = values[steps >= start_step]
  return values[np.isfinite(values)]


def window_mean(
    metrics: Metrics, name: str, start_step: int
) -> Optional[float]:
  values = window_values(metrics, name, start_step)
  return float(values.mean()) if values.size else None


def effective_window(metrics: Metrics, window: int) -> tuple[int, int, int]:
  """(window, start_step, last_step). A run shorter than two windows uses its later half.

  Without this, a short run's window would contain its initial drop and never read as flat.
  """
  train = [
      s for n, (s, _) in metrics.items() if n.startswith("train/") and s.size
  ]
  all_steps = train or [s for s, _ in metrics.values() if s.size]
  if not all_steps:
    return window, 0, 0
  first = int(min(s[0] for s in all_steps))
  last = int(max(s[-1] for s in all_steps))
  span = last - first
  if span < 2 * window:
    window = max(span // 2, 1)
  return window, last - window, last


def fit_trend(
    steps: np.ndarray, values: np.ndarray, start_step: int
) -> Optional[Trend]:
  """Least-squares line over the points at or after start_step; None if too few points."""
  keep = (steps >= start_step) & np.isfinite(values)
  s, v = steps[keep].astype(np.float64), values[keep]
  if s.size < MIN_TREND_POINTS or s[-1] == s[0]:
    return None
  x = s - s[0]
  slope, intercept = np.polyfit(x, v, 1)
  residual = v - (intercept + slope * x)
  dof = max(s.size - 2, 1)
  slope_stderr = math.sqrt(
      float(residual @ residual) / dof / float(((x - x.mean()) ** 2).sum())
  )
  fit_start, fit_end = intercept, intercept + slope * x[-1]
  k = max(1, s.size // 10)
  first, last = float(v[:k].mean()), float(v[-k:].mean())
  tiny = 1e-12
  return Trend(
      start_step=int(s[0]),
      end_step=int(s[-1]),
      num_points=int(s.size),
      first=first,
      last=last,
      rel_change=float((fit_end - fit_start) / max(abs(fit_start), tiny)),
      rel_change_ends=float((last - first) / max(abs(first), tiny)),
      slope=float(slope),
      slope_stderr=slope_stderr,
  )


def val_flow_at(metrics: Metrics, *steps) -> tuple[Optional[float], ...]:
  """val/flow at each of `steps` (None where it was not logged)."""
  if "val/flow" not in metrics:
    return (None,) * len(steps)
  flow = dict(
      zip(metrics["val/flow"][0].tolist(), metrics["val/flow"][1].tolist())
  )
  return tuple(flow.get(int(s)) for s in steps)


def finite_series(metrics: Metrics, name: str):
  """(steps, values, index of the lowest value) of a metric's finite points,
  or None when it has none."""
  if name not in metrics:
    return None
  steps, values = metrics[name]
  keep = np.isfinite(values)
  steps, values = steps[keep], values[keep]
  if not steps.size:
    return None
  return steps, values, int(np.argmin(values))
