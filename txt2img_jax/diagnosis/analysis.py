"""Reads off every number the diagnosis reports from a run's series, then
raises the flags.

`analyze` fills the `Report`: the loss split, learning rates per group,
norms, text posterior, t segments, non-finite steps, the mosaic and distance
measures; the checks (checks.py) raise the flags. The series come from
logs.py, what one series says (latest value, window, trend) from series.py.
Imports neither jax nor the model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.diagnosis.checks import (
    check_buckets,
    check_loss_trend,
    check_lr,
    check_metrics_order,
    check_mosaic,
    check_distance,
    check_nonfinite,
    check_norms,
    check_posterior,
)
from txt2img_jax.diagnosis.logs import Metrics
from txt2img_jax.diagnosis.report import BucketInfo, Flag, LrInfo, Report
from txt2img_jax.diagnosis.series import (
    effective_window,
    finite_series,
    fit_trend,
    latest,
    val_flow_at,
    window_mean,
    window_values,
)
from txt2img_jax.diagnosis.thresholds import (
    BUCKET_RE,
    DEFAULT_WINDOW,
    LOSS_COMPONENTS,
    LR_WARMUP_RISE,
)


def _loss_table(metrics: Metrics) -> dict[str, dict[str, Optional[float]]]:
  total = latest(metrics, "train/loss")
  table = {
      "total": {
          "value": total,
          "ema": latest(metrics, "train/loss_ema"),
          "share": None,
      }
  }
  for c in LOSS_COMPONENTS:
    value = latest(metrics, f"train/loss_{c}")
    if value is None:
      continue
    share = value / total if total not in (None, 0.0) else None
    table[c] = {
        "value": value,
        "ema": latest(metrics, f"train/loss_{c}_ema"),
        "share": share,
    }
  return table


def group_lrs(config: Mapping[str, Any]) -> dict[str, float]:
  groups = (config.get("optim") or {}).get("groups") or {}
  out = {}
  for g, spec in groups.items():
    if isinstance(spec, Mapping) and isinstance(spec.get("lr"), (int, float)):
      out[g] = float(spec["lr"])
  return out


def _lr_table(
    metrics: Metrics, config: Mapping[str, Any], start: int
) -> dict[str, LrInfo]:
  base = group_lrs(config)
  groups = {
      n[len("train/lr/") :] for n in metrics if n.startswith("train/lr/")
  } | set(base)
  table = {}
  for g in sorted(groups):
    actual = latest(metrics, f"train/lr/{g}")
    b = base.get(g)
    ratio = actual / b if actual is not None and b else None
    values = window_values(metrics, f"train/lr/{g}", start)
    warming = bool(values.size >= 2 and values[-1] > LR_WARMUP_RISE * values[0])
    table[g] = LrInfo(actual=actual, base=b, ratio=ratio, warming_up=warming)
  return table


def _prefixed(metrics: Metrics, prefix: str) -> dict[str, float]:
  out = {}
  for name in sorted(metrics):
    if name.startswith(prefix):
      value = latest(metrics, name)
      if value is not None:
        out[name[len(prefix) :]] = value
  return out


def _posterior(
    metrics: Metrics, config: Mapping[str, Any]
) -> dict[str, Optional[float]]:
  post = {
      k: latest(metrics, f"train/{k}")
      for k in (
          "mu_min",
          "mu_max",
          "mu_mean",
          "logvar_min",
          "logvar_max",
          "logvar_mean",
      )
  }
  post["var_min"] = (
      math.exp(post["logvar_min"]) if post["logvar_min"] is not None else None
  )
  post["var_max"] = (
      math.exp(post["logvar_max"]) if post["logvar_max"] is not None else None
  )
  post["kl_raw"] = latest(metrics, "train/kl_raw")
  post["kl_weight"] = latest(metrics, "train/kl_weight")
  dims = config.get("latent_dims")
  post["latent_dims"] = (
      float(dims) if isinstance(dims, (int, float)) and dims > 0 else None
  )
  post["kl_per_dim"] = (
      post["kl_raw"] / post["latent_dims"]
      if post["kl_raw"] is not None and post["latent_dims"]
      else None
  )
  return post


def _buckets(metrics: Metrics, start: int) -> list[BucketInfo]:
  indices = sorted(int(m.group(1)) for m in map(BUCKET_RE.match, metrics) if m)
  k = (max(indices) + 1) if indices else 0
  out = []
  for i in indices:
    name = f"train/loss_flow_bucket/{i}"
    out.append(
        BucketInfo(
            index=i,
            t_lo=i / k,
            t_hi=(i + 1) / k,
            latest=latest(metrics, name),
            window_mean=window_mean(metrics, name, start),
            trend=fit_trend(*metrics[name], start),
        )
    )
  return out


def _mosaic(metrics: Metrics) -> dict[str, Optional[float]]:
  """The latest blockiness and hf of the samples, the lowest blockiness before, and the val
  flow loss at both evaluations."""
  out = {
      k: None
      for k in (
          "blockiness",
          "blockiness_min",
          "min_step",
          "step",
          "hf",
          "flow",
          "flow_at_min",
      )
  }
  found = finite_series(metrics, "val/blockiness")
  if found is None:
    return out
  steps, values, i = found
  out.update(
      blockiness=float(values[-1]),
      step=int(steps[-1]),
      blockiness_min=float(values[i]),
      min_step=int(steps[i]),
      hf=latest(metrics, "val/hf"),
  )
  out["flow"], out["flow_at_min"] = val_flow_at(metrics, steps[-1], steps[i])
  return out


def _distance(metrics: Metrics) -> dict[str, Any]:
  """The latest KID of the samples against real images, its lowest before, its subset
  std, and the val flow loss at both evaluations (the first network logged)."""
  out = dict.fromkeys(
      (
          "net",
          "kid",
          "kid_min",
          "kid_std",
          "step",
          "min_step",
          "flow",
          "flow_at_min",
      )
  )
  nets = sorted(
      k[len("val/kid_") :]
      for k in metrics
      if k.startswith("val/kid_") and not k.endswith("_std")
  )
  if not nets:
    return out
  net = nets[0]
  found = finite_series(metrics, f"val/kid_{net}")
  if found is None:
    return out
  steps, values, i = found
  out.update(
      net=net,
      kid=float(values[-1]),
      step=int(steps[-1]),
      kid_min=float(values[i]),
      min_step=int(steps[i]),
      kid_std=latest(metrics, f"val/kid_{net}_std"),
  )
  out["flow"], out["flow_at_min"] = val_flow_at(metrics, steps[-1], steps[i])
  return out


def _order_problems(workdir: str) -> list[tuple[int, str, int, int]]:
  if not workdir or not paths.exists(runfiles.metrics_path(workdir)):
    return []
  return runfiles.out_of_order(runfiles.read_metrics(workdir))


def analyze(
    metrics: Metrics,
    config: Optional[Mapping[str, Any]] = None,
    window: int = DEFAULT_WINDOW,
    workdir: str = "",
    num_lines: int = 0,
) -> Report:
  """Reads off every number of §4 of the design and raises the flags."""
  config = config or {}
  window, start, last = effective_window(metrics, window)
  steps = [s for s, _ in metrics.values() if s.size]
  trends = {}
  for name in (
      ["train/loss"]
      + [f"train/loss_{c}" for c in LOSS_COMPONENTS]
      + ["train/kl_raw"]
  ):
    if name in metrics:
      trend = fit_trend(*metrics[name], start)
      if trend is not None:
        trends[name] = trend

  z, x1 = latest(metrics, "train/z_text_norm"), latest(metrics, "train/x1_norm")
  ratio = latest(metrics, "train/norm_ratio")
  if ratio is None and z is not None and x1:
    ratio = z / x1
  norms = {"z_text": z, "x1": x1, "ratio": ratio}

  nonfinite_total = latest(metrics, "train/nonfinite_steps")
  grew_by = None
  if nonfinite_total is not None:
    s, v = metrics["train/nonfinite_steps"]
    before = v[(s < start) & np.isfinite(v)]
    base = float(before[-1]) if before.size else 0.0
    grew_by = max(nonfinite_total - base, 0.0)

  grad = _prefixed(metrics, "train/grad_norm/")
  if latest(metrics, "train/grad_norm") is not None:
    grad = {"global": latest(metrics, "train/grad_norm"), **grad}

  report = Report(
      workdir=workdir,
      step=last if steps else None,
      first_step=int(min(s[0] for s in steps)) if steps else None,
      num_lines=num_lines,
      window=window,
      latest={
          n: v for n in sorted(metrics) if (v := latest(metrics, n)) is not None
      },
      losses=_loss_table(metrics),
      lr=_lr_table(metrics, config, start),
      grad_norms=grad,
      param_norms=_prefixed(metrics, "train/param_norm/"),
      norms=norms,
      posterior=_posterior(metrics, config),
      trends=trends,
      buckets=_buckets(metrics, start),
      nonfinite={"total": nonfinite_total, "grew_by": grew_by},
      steps_per_sec=latest(metrics, "train/steps_per_sec"),
      eval={
          **_prefixed(metrics, "eval/"),
          **{f"val/{k}": v for k, v in _prefixed(metrics, "val/").items()},
      },
      mosaic=_mosaic(metrics),
      distance=_distance(metrics),
      flags=[],
  )

  flags = report.flags
  skipped = [
      r
      for r in (
          check_loss_trend(trends, flags),
          check_lr(report.lr, flags),
          check_posterior(report.posterior, flags),
          check_norms(norms, flags),
          check_buckets(report.buckets, flags),
          check_nonfinite(report.nonfinite, flags),
          check_mosaic(report.mosaic, flags),
          check_distance(report.distance, flags),
          check_metrics_order(_order_problems(workdir), flags),
      )
      if r
  ]
  if not report.warnings:
    flags.append(Flag("ok", "info", _ok_message(report)))
  if skipped:
    flags.append(Flag("not_checked", "info", "; ".join(skipped)))
  return report


def _ok_message(report: Report) -> str:
  parts = ["no warning raised"]
  trend = report.trends.get("train/loss_flow") or report.trends.get(
      "train/loss"
  )
  if trend is not None:
    parts.append(f"flow loss {100 * trend.rel_change:+.1f}% over the window")
  ratios = [
      f"{g} {i.ratio:.2f}×" for g, i in report.lr.items() if i.ratio is not None
  ]
  if ratios:
    parts.append("LR/base " + ", ".join(ratios))
  if report.norms["ratio"] is not None:
    parts.append(f"norm ratio {report.norms['ratio']:.2f}")
  return "; ".join(parts) + "."
