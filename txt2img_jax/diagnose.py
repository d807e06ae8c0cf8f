"""Reads a run's logs and writes the diagnosis a person would otherwise write by hand.

The report follows the note in shared/run-diagnosis.zh.md: iteration, loss split, actual vs
configured learning rate per group, modality norms, text-posterior statistics, flow loss per t
segment, non-finite steps, and a list of flags, each naming the config switch that addresses it.

    python -m txt2img_jax.diagnose --workdir=W [--out_dir=D] [--window=N]

Everything a test or a notebook needs is importable: `load_metrics`, `load_config`, `analyze`,
`format_report`, `report_to_json`, `plot_run`. The module reads only `W/metrics.jsonl` and
`W/config.json`; it imports neither jax nor the model, so it runs anywhere the logs are.
Thresholds are documented in docs/diagnostics.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Mapping, Optional

import numpy as np

from txt2img_jax import runfiles

Series = tuple[np.ndarray, np.ndarray]  # (steps, values), sorted by step.
Metrics = dict[str, Series]

# --------------------------------------------------------------------------------------------
# Thresholds. Each is a judgement; docs/diagnostics.md says how it was chosen.
# --------------------------------------------------------------------------------------------

# The note reads a trend after 3–5k iterations of a change ("3–5k iters 就能看出趋势"), so the
# default window over which "is it still falling?" is asked is 5k training steps.
DEFAULT_WINDOW = 5000
# Below this many logged points in the window a fitted slope is noise; the trend is skipped.
MIN_TREND_POINTS = 6
# Flow loss falling by less than 2% over the window (fitted line and end means both) is a
# plateau. The note's run sat at 0.92–0.93 for tens of thousands of steps (≈1% per window),
# while a run that still learns shape loses several % per 5k steps.
PLATEAU_REL_CHANGE = 0.02
# Rising by more than 5% over a window is not a plateau but a run going wrong.
RISING_REL_CHANGE = 0.05
# Actual LR below 0.2× the configured base LR is the note's "chronic plateau" zone: it saw
# 2.5e-7 against 2.5e-6 (0.1×). A cosine decay spends its last ~15% of steps below 0.2×,
# so a healthy run only trips this at the very end of its schedule.
LR_FAR_BELOW_RATIO = 0.2
# An LR that rose by more than 5% across the window is still warming up, not decayed.
LR_WARMUP_RISE = 1.05
# KL per latent dimension (nats) below which the text posterior carries almost nothing: a dim
# with mu = 0, var = 0.65 has KL 0.04; |mu| = 1, var = 1 has 0.5. The note: 70 / 4096 ≈ 0.017.
KL_PER_DIM_COLLAPSED = 0.05
# Posterior-statistics test of the same collapse, for when latent_dims is unknown: every
# log_var close to 0 (var ∈ [0.61, 1.11]) and every mean within ±1.5. The note:
# log_var ∈ [−0.44, 0.02], mu ∈ [−1.15, 1.28].
LOGVAR_COLLAPSED_RANGE = (-0.5, 0.1)
MU_COLLAPSED_ABS = 1.5
# ‖z_text‖/‖x1‖ outside [0.5, 2]: the flow has to rescale the latent by more than 2× on its
# way, which the velocity target then dominates. The note's run had 0.98–0.99.
NORM_RATIO_RANGE = (0.5, 2.0)
# A t bucket is stuck when it falls by less than 1% over the window while the median of the
# other buckets falls by more than 3%.
BUCKET_STUCK_REL = 0.01
BUCKET_OTHERS_FALLING_REL = 0.03
# A bucket whose window-mean loss is more than 3× the median of the others. Some slope across t
# is normal (the text end, t≈0, is the hardest), so only a large factor is flagged.
BUCKET_FAR_ABOVE = 3.0

# Levers: the config switch that addresses each flag. Kept in one place so that a renamed
# config field is changed once.
LEVER_LR_RESTART = ("restart the LR: --config.init_from=W with configs/restart.py and "
                    "--config.head.kind=<W's head> (new cosine cycle, peak 2× base, floor = "
                    "the LR reached now; the note: T0=20k, eta_min=2.5e-7)")
LEVER_TIME_SAMPLING = ("time sampling: configs/logsnr.py (uniform logSNR λ∈[−2, 6], "
                       "curriculum α>0.8 for the first 30k steps)")
# On the noise-free path the text end (t ~ 0) is where the image is formed
# from z_text alone and the note's high-signal advice never trains it
# (docs/recipes.md), so a stuck text end gets the opposite lever.
LEVER_TEXT_END = ("more draws at the text end of the path: configs/restart.py's "
                  "time.sampler (curriculum from t in [0, 0.15]); not the note's "
                  "alpha > 0.8, which never trains t < 0.8")


def _bucket_lever(b: "BucketInfo") -> str:
  return LEVER_TEXT_END if b.index == 0 else LEVER_TIME_SAMPLING
LEVER_TEXT_SIDE = ("lower β_KL on the summed KL: --config.loss.kl_weight (the recipe's "
                      "1e-4); contrastive weight ×2: --config.loss.clip_weight=2.0; text head "
                      "--config.head.kind=token_transformer (best in docs/heads.md; the note's "
                      "spatial grid_query head drew nothing there)")
LEVER_NORMS = ("check latent standardisation (per-channel shift/scale stored with the run) "
               "and β_KL: --config.loss.kl_weight")
LEVER_NONFINITE = ("gradient clipping --config.optim.grad_clip=1.0, a lower peak LR, and the "
                   "batch at the failing step")
LEVER_RISING = "lower the peak LR or restart from the last good checkpoint"

# Names as the trainer logs them.
LOSS_COMPONENTS = ("flow", "kl", "clip", "tv", "lpips")
_BUCKET_RE = re.compile(r"^train/loss_flow_bucket/(\d+)$")


# --------------------------------------------------------------------------------------------
# Report structure.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Flag:
  name: str
  severity: str  # "warning" or "info".
  message: str
  lever: str = ""


@dataclasses.dataclass
class Trend:
  """A metric over the window: a least-squares line and the means of its first/last tenth."""
  start_step: int
  end_step: int
  num_points: int
  first: float  # Mean of the first tenth of the window's points.
  last: float  # Mean of the last tenth.
  rel_change: float  # Fitted change across the window over |fitted start|.
  rel_change_ends: float  # (last − first) / |first|.
  slope: float  # Per step.
  slope_stderr: float


@dataclasses.dataclass
class LrInfo:
  actual: Optional[float]
  base: Optional[float]
  ratio: Optional[float]  # actual / base.
  warming_up: bool


@dataclasses.dataclass
class BucketInfo:
  index: int
  t_lo: float
  t_hi: float
  latest: Optional[float]
  window_mean: Optional[float]
  trend: Optional[Trend]


@dataclasses.dataclass
class Report:
  workdir: str
  step: Optional[int]  # The iteration: the last logged step.
  first_step: Optional[int]
  num_lines: int
  window: int  # Effective window in steps (see `effective_window`).
  latest: dict[str, float]  # Latest finite value of every metric.
  losses: dict[str, dict[str, Optional[float]]]  # component -> value, ema, share of total.
  lr: dict[str, LrInfo]
  grad_norms: dict[str, float]  # "global" and per group.
  param_norms: dict[str, float]
  norms: dict[str, Optional[float]]  # z_text, x1, ratio.
  posterior: dict[str, Optional[float]]
  trends: dict[str, Trend]
  buckets: list[BucketInfo]
  nonfinite: dict[str, Optional[float]]  # total, grew_by (within the window).
  steps_per_sec: Optional[float]
  eval: dict[str, float]
  flags: list[Flag]

  @property
  def warnings(self) -> list[Flag]:
    return [f for f in self.flags if f.severity == "warning"]


class MetricsNotFoundError(FileNotFoundError):
  pass


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------

def load_metrics(workdir: str) -> Metrics:
  """Reads W/metrics.jsonl into {name: (steps, values)}.

  A step logged twice (a run resumed from a checkpoint older than its last log line) keeps its
  latest value: that is the history the current run has. A torn last line (a run killed
  mid-write) is dropped with a warning; a broken line elsewhere is an error (see runfiles).
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise MetricsNotFoundError(
        f"no metrics.jsonl in {workdir!r}: is this a txt2img_jax workdir, and has the run "
        "logged its first step?")
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
    metrics[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return metrics


def load_config(workdir: str) -> dict[str, Any]:
  """W/config.json as a dict; {} when absent (the LR and KL-per-dim checks are then skipped)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def count_lines(workdir: str) -> int:
  return len(runfiles.read_metrics(workdir))


# --------------------------------------------------------------------------------------------
# Analysis.
# --------------------------------------------------------------------------------------------

def _latest(metrics: Metrics, name: str) -> Optional[float]:
  if name not in metrics:
    return None
  values = metrics[name][1]
  finite = values[np.isfinite(values)]
  return float(finite[-1]) if finite.size else None


def _window_values(metrics: Metrics, name: str, start_step: int) -> np.ndarray:
  steps, values = metrics.get(name, (np.zeros(0), np.zeros(0)))
  values = values[steps >= start_step]
  return values[np.isfinite(values)]


def _window_mean(metrics: Metrics, name: str, start_step: int) -> Optional[float]:
  values = _window_values(metrics, name, start_step)
  return float(values.mean()) if values.size else None


def effective_window(metrics: Metrics, window: int) -> tuple[int, int, int]:
  """(window, start_step, last_step). A run shorter than two windows uses its later half.

  Without this, a short run's window would contain its initial drop and never read as flat.
  """
  train = [s for n, (s, _) in metrics.items() if n.startswith("train/") and s.size]
  all_steps = train or [s for s, _ in metrics.values() if s.size]
  if not all_steps:
    return window, 0, 0
  first = int(min(s[0] for s in all_steps))
  last = int(max(s[-1] for s in all_steps))
  span = last - first
  if span < 2 * window:
    window = max(span // 2, 1)
  return window, last - window, last


def fit_trend(steps: np.ndarray, values: np.ndarray, start_step: int) -> Optional[Trend]:
  """Least-squares line over the points at or after start_step; None if too few points."""
  keep = (steps >= start_step) & np.isfinite(values)
  s, v = steps[keep].astype(np.float64), values[keep]
  if s.size < MIN_TREND_POINTS or s[-1] == s[0]:
    return None
  x = s - s[0]
  slope, intercept = np.polyfit(x, v, 1)
  residual = v - (intercept + slope * x)
  dof = max(s.size - 2, 1)
  slope_stderr = math.sqrt(float(residual @ residual) / dof / float(((x - x.mean()) ** 2).sum()))
  fit_start, fit_end = intercept, intercept + slope * x[-1]
  k = max(1, s.size // 10)
  first, last = float(v[:k].mean()), float(v[-k:].mean())
  tiny = 1e-12
  return Trend(
      start_step=int(s[0]), end_step=int(s[-1]), num_points=int(s.size), first=first, last=last,
      rel_change=float((fit_end - fit_start) / max(abs(fit_start), tiny)),
      rel_change_ends=float((last - first) / max(abs(first), tiny)),
      slope=float(slope), slope_stderr=slope_stderr)


def _loss_table(metrics: Metrics) -> dict[str, dict[str, Optional[float]]]:
  total = _latest(metrics, "train/loss")
  table = {"total": {"value": total, "ema": _latest(metrics, "train/loss_ema"), "share": None}}
  for c in LOSS_COMPONENTS:
    value = _latest(metrics, f"train/loss_{c}")
    if value is None:
      continue
    share = value / total if total not in (None, 0.0) else None
    table[c] = {"value": value, "ema": _latest(metrics, f"train/loss_{c}_ema"), "share": share}
  return table


def _group_lrs(config: Mapping[str, Any]) -> dict[str, float]:
  groups = (config.get("optim") or {}).get("groups") or {}
  out = {}
  for g, spec in groups.items():
    if isinstance(spec, Mapping) and isinstance(spec.get("lr"), (int, float)):
      out[g] = float(spec["lr"])
  return out


def _lr_table(metrics: Metrics, config: Mapping[str, Any], start: int) -> dict[str, LrInfo]:
  base = _group_lrs(config)
  groups = {n[len("train/lr/"):] for n in metrics if n.startswith("train/lr/")} | set(base)
  table = {}
  for g in sorted(groups):
    actual = _latest(metrics, f"train/lr/{g}")
    b = base.get(g)
    ratio = actual / b if actual is not None and b else None
    values = _window_values(metrics, f"train/lr/{g}", start)
    warming = bool(values.size >= 2 and values[-1] > LR_WARMUP_RISE * values[0])
    table[g] = LrInfo(actual=actual, base=b, ratio=ratio, warming_up=warming)
  return table


def _prefixed(metrics: Metrics, prefix: str) -> dict[str, float]:
  out = {}
  for name in sorted(metrics):
    if name.startswith(prefix):
      value = _latest(metrics, name)
      if value is not None:
        out[name[len(prefix):]] = value
  return out


def _posterior(metrics: Metrics, config: Mapping[str, Any]) -> dict[str, Optional[float]]:
  post = {k: _latest(metrics, f"train/{k}") for k in (
      "mu_min", "mu_max", "mu_mean", "logvar_min", "logvar_max", "logvar_mean")}
  post["var_min"] = math.exp(post["logvar_min"]) if post["logvar_min"] is not None else None
  post["var_max"] = math.exp(post["logvar_max"]) if post["logvar_max"] is not None else None
  post["kl_raw"] = _latest(metrics, "train/kl_raw")
  post["kl_weight"] = _latest(metrics, "train/kl_weight")
  dims = config.get("latent_dims")
  post["latent_dims"] = float(dims) if isinstance(dims, (int, float)) and dims > 0 else None
  post["kl_per_dim"] = (post["kl_raw"] / post["latent_dims"]
                        if post["kl_raw"] is not None and post["latent_dims"] else None)
  return post


def _buckets(metrics: Metrics, start: int) -> list[BucketInfo]:
  indices = sorted(int(m.group(1)) for m in map(_BUCKET_RE.match, metrics) if m)
  k = (max(indices) + 1) if indices else 0
  out = []
  for i in indices:
    name = f"train/loss_flow_bucket/{i}"
    out.append(BucketInfo(
        index=i, t_lo=i / k, t_hi=(i + 1) / k, latest=_latest(metrics, name),
        window_mean=_window_mean(metrics, name, start), trend=fit_trend(*metrics[name], start)))
  return out


def segment_name(b: BucketInfo) -> str:
  if b.t_lo == 0.0:
    where = "the text end"
  elif b.t_hi == 1.0:
    where = "the image end"
  else:
    where = "the middle"
  return f"t ∈ [{b.t_lo:.2f}, {b.t_hi:.2f}) (bucket {b.index}, {where})"


# --- Flags. Each check appends to `flags` and returns the name of what it could not check. ---

def _check_loss_trend(trends: dict[str, Trend], flags: list[Flag]) -> Optional[str]:
  name = "train/loss_flow" if "train/loss_flow" in trends else "train/loss"
  trend = trends.get(name)
  if trend is None:
    return "plateau (no flow loss with enough points in the window)"
  pct = 100 * trend.rel_change
  span = f"over the last {trend.end_step - trend.start_step} steps"
  if trend.rel_change > RISING_REL_CHANGE:
    flags.append(Flag(
        "loss_rising", "warning",
        f"{name} rose {pct:+.1f}% {span} ({trend.first:.4g} → {trend.last:.4g}).",
        LEVER_RISING))
  elif (trend.rel_change > -PLATEAU_REL_CHANGE
        and trend.rel_change_ends > -PLATEAU_REL_CHANGE):
    flags.append(Flag(
        "plateau", "warning",
        f"{name} is flat {span}: fitted change {pct:+.2f}% (ends {trend.first:.4g} → "
        f"{trend.last:.4g}), threshold −{100 * PLATEAU_REL_CHANGE:.0f}%.",
        f"in order: {LEVER_LR_RESTART}; {LEVER_TIME_SAMPLING}; {LEVER_TEXT_SIDE}"))
  return None


def _check_lr(lr: dict[str, LrInfo], flags: list[Flag]) -> Optional[str]:
  checked, low = False, []
  for g, info in lr.items():
    if info.ratio is None:
      continue
    checked = True
    if info.ratio >= LR_FAR_BELOW_RATIO:
      continue
    if info.warming_up:
      flags.append(Flag(
          "lr_warmup", "info",
          f"{g}: LR {info.actual:.3g} is {info.ratio:.2f}× base {info.base:.3g}, still rising "
          "(warmup)."))
      continue
    low.append(f"{g} {info.actual:.3g} = {info.ratio:.2f}× base {info.base:.3g}")
  if low:
    flags.append(Flag(
        "lr_far_below_base", "warning",
        "actual LR " + "; ".join(low) + f" (threshold {LR_FAR_BELOW_RATIO}×): the decay has "
        "left it too small to move the loss.", LEVER_LR_RESTART))
  return None if checked else "lr_far_below_base (no train/lr/<group> with a base LR in config)"


def _check_posterior(post: dict[str, Optional[float]], flags: list[Flag]) -> Optional[str]:
  reasons = []
  if post["kl_per_dim"] is not None and post["kl_per_dim"] < KL_PER_DIM_COLLAPSED:
    reasons.append(f"KL {post['kl_per_dim']:.3g} nats/dim < {KL_PER_DIM_COLLAPSED} "
                   f"(kl_raw {post['kl_raw']:.4g} over {post['latent_dims']:.0f} dims)")
  stats = [post[k] for k in ("mu_min", "mu_max", "logvar_min", "logvar_max")]
  if all(v is not None for v in stats):
    mu_min, mu_max, lv_min, lv_max = stats
    lo, hi = LOGVAR_COLLAPSED_RANGE
    if lv_min >= lo and lv_max <= hi and max(abs(mu_min), abs(mu_max)) <= MU_COLLAPSED_ABS:
      reasons.append(
          f"log_var ∈ [{lv_min:.2f}, {lv_max:.2f}] (var {math.exp(lv_min):.2f}–"
          f"{math.exp(lv_max):.2f}) within [{lo}, {hi}] and mu ∈ [{mu_min:.2f}, {mu_max:.2f}] "
          f"within ±{MU_COLLAPSED_ABS}")
  elif post["kl_per_dim"] is None:
    return "posterior_collapsed (no mu/logvar statistics, and no kl_raw with latent_dims)"
  if reasons:
    flags.append(Flag(
        "posterior_collapsed", "warning",
        "text posterior ≈ N(0, I): " + "; ".join(reasons) + ". z_text carries little "
        "per-position information, so the flow learns colour statistics, not shapes.",
        LEVER_TEXT_SIDE))
  return None


def _check_norms(norms: dict[str, Optional[float]], flags: list[Flag]) -> Optional[str]:
  ratio = norms["ratio"]
  if ratio is None:
    return "norm_mismatch (no norm_ratio or z_text/x1 norms)"
  lo, hi = NORM_RATIO_RANGE
  if not lo <= ratio <= hi:
    flags.append(Flag(
        "norm_mismatch", "warning",
        f"‖z_text‖/‖x1‖ = {ratio:.3g} outside [{lo}, {hi}] (‖z_text‖ {_f(norms['z_text'])}, "
        f"‖x1‖ {_f(norms['x1'])}).", LEVER_NORMS))
  return None


def _check_buckets(buckets: list[BucketInfo], flags: list[Flag]) -> Optional[str]:
  if len(buckets) < 2:
    return "t_segment_stuck (fewer than 2 t buckets logged)"
  for b in buckets:
    others = [o for o in buckets if o.index != b.index]
    other_rel = [o.trend.rel_change for o in others if o.trend is not None]
    if (b.trend is not None and other_rel and b.trend.rel_change > -BUCKET_STUCK_REL
        and float(np.median(other_rel)) < -BUCKET_OTHERS_FALLING_REL):
      flags.append(Flag(
          "t_segment_stuck", "warning",
          f"flow loss at {segment_name(b)} changed {100 * b.trend.rel_change:+.1f}% over the "
          f"window while the other segments fell {100 * float(np.median(other_rel)):.1f}% "
          "(median).", _bucket_lever(b)))
      continue
    other_means = [o.window_mean for o in others if o.window_mean is not None]
    if b.window_mean is not None and other_means:
      median = float(np.median(other_means))
      if median > 0 and b.window_mean > BUCKET_FAR_ABOVE * median:
        flags.append(Flag(
            "t_segment_stuck", "warning",
            f"flow loss at {segment_name(b)} is {b.window_mean:.4g}, "
            f"{b.window_mean / median:.1f}× the median of the other segments ({median:.4g}).",
            _bucket_lever(b)))
  return None


def _check_nonfinite(nonfinite: dict[str, Optional[float]], flags: list[Flag]) -> Optional[str]:
  total, grew = nonfinite["total"], nonfinite["grew_by"]
  if total is None:
    return "nonfinite_steps (no train/nonfinite_steps)"
  if grew:
    flags.append(Flag(
        "nonfinite_steps", "warning",
        f"{grew:.0f} non-finite step(s) in the window ({total:.0f} in the run).",
        LEVER_NONFINITE))
  elif total > 0:
    flags.append(Flag("nonfinite_steps", "info",
                      f"{total:.0f} non-finite step(s) earlier in the run, none in the window."))
  return None


def analyze(metrics: Metrics, config: Optional[Mapping[str, Any]] = None,
            window: int = DEFAULT_WINDOW, workdir: str = "", num_lines: int = 0) -> Report:
  """Reads off every number of §4 of the design and raises the flags."""
  config = config or {}
  window, start, last = effective_window(metrics, window)
  steps = [s for s, _ in metrics.values() if s.size]
  trends = {}
  for name in ["train/loss"] + [f"train/loss_{c}" for c in LOSS_COMPONENTS] + ["train/kl_raw"]:
    if name in metrics:
      trend = fit_trend(*metrics[name], start)
      if trend is not None:
        trends[name] = trend

  z, x1 = _latest(metrics, "train/z_text_norm"), _latest(metrics, "train/x1_norm")
  ratio = _latest(metrics, "train/norm_ratio")
  if ratio is None and z is not None and x1:
    ratio = z / x1
  norms = {"z_text": z, "x1": x1, "ratio": ratio}

  nonfinite_total = _latest(metrics, "train/nonfinite_steps")
  grew_by = None
  if nonfinite_total is not None:
    s, v = metrics["train/nonfinite_steps"]
    before = v[(s < start) & np.isfinite(v)]
    base = float(before[-1]) if before.size else 0.0
    grew_by = max(nonfinite_total - base, 0.0)

  grad = _prefixed(metrics, "train/grad_norm/")
  if _latest(metrics, "train/grad_norm") is not None:
    grad = {"global": _latest(metrics, "train/grad_norm"), **grad}

  report = Report(
      workdir=workdir, step=last if steps else None,
      first_step=int(min(s[0] for s in steps)) if steps else None, num_lines=num_lines,
      window=window,
      latest={n: v for n in sorted(metrics) if (v := _latest(metrics, n)) is not None},
      losses=_loss_table(metrics), lr=_lr_table(metrics, config, start), grad_norms=grad,
      param_norms=_prefixed(metrics, "train/param_norm/"), norms=norms,
      posterior=_posterior(metrics, config), trends=trends, buckets=_buckets(metrics, start),
      nonfinite={"total": nonfinite_total, "grew_by": grew_by},
      steps_per_sec=_latest(metrics, "train/steps_per_sec"),
      eval=_prefixed(metrics, "eval/"), flags=[])

  flags = report.flags
  skipped = [r for r in (
      _check_loss_trend(trends, flags),
      _check_lr(report.lr, flags),
      _check_posterior(report.posterior, flags),
      _check_norms(norms, flags),
      _check_buckets(report.buckets, flags),
      _check_nonfinite(report.nonfinite, flags)) if r]
  if not report.warnings:
    flags.append(Flag("ok", "info", _ok_message(report)))
  if skipped:
    flags.append(Flag("not_checked", "info", "; ".join(skipped)))
  return report


def _ok_message(report: Report) -> str:
  parts = ["no warning raised"]
  trend = report.trends.get("train/loss_flow") or report.trends.get("train/loss")
  if trend is not None:
    parts.append(f"flow loss {100 * trend.rel_change:+.1f}% over the window")
  ratios = [f"{g} {i.ratio:.2f}×" for g, i in report.lr.items() if i.ratio is not None]
  if ratios:
    parts.append("LR/base " + ", ".join(ratios))
  if report.norms["ratio"] is not None:
    parts.append(f"norm ratio {report.norms['ratio']:.2f}")
  return "; ".join(parts) + "."


# --------------------------------------------------------------------------------------------
# Text and JSON.
# --------------------------------------------------------------------------------------------

def _f(x: Optional[float], fmt: str = "#.4g") -> str:
  return "—" if x is None else format(x, fmt)


def _pct(x: Optional[float]) -> str:
  return "—" if x is None else f"{100 * x:+.1f}%"


def format_report(report: Report) -> str:
  """A readable report with the note's sections; numbers at the precision one would quote."""
  out = []
  add = out.append
  add(f"Run diagnosis: {report.workdir or '(metrics)'}")
  add(f"iteration {report.step} (logged from step {report.first_step}, {report.num_lines} lines)"
      f"; {_f(report.steps_per_sec, '.3g')} steps/s; trend window: last {report.window} steps")

  add("\nLosses (latest | EMA | share of total | change over window)")
  for comp, row in report.losses.items():
    trend = report.trends.get("train/loss" if comp == "total" else f"train/loss_{comp}")
    share = "" if row["share"] is None else f"{100 * row['share']:5.1f}%"
    add(f"  {comp:<6} {_f(row['value']):>10} | {_f(row['ema']):>10} | {share:>6} | "
        f"{_pct(trend.rel_change if trend else None):>7}")
  post = report.posterior
  if post["kl_raw"] is not None:
    add(f"  kl_raw {_f(post['kl_raw'])} × kl_weight {_f(post['kl_weight'], '.3g')}"
        + (f" (kl_raw trend {_pct(report.trends['train/kl_raw'].rel_change)})"
           if "train/kl_raw" in report.trends else ""))
  clip_w = report.latest.get("train/clip_weight")
  if clip_w is not None:
    add(f"  clip_weight {clip_w:.3g}")

  if report.lr:
    add("\nLearning rate (actual | configured base | ratio)")
    for g, i in report.lr.items():
      note = "  (warming up)" if i.warming_up else ""
      add(f"  {g:<14} {_f(i.actual, '.3g'):>9} | {_f(i.base, '.3g'):>9} | "
          f"{_f(i.ratio, '.3g')}×{note}")

  if report.grad_norms or report.param_norms:
    add("\nGradient | parameter norms")
    groups = sorted(set(report.grad_norms) | set(report.param_norms),
                    key=lambda g: (g != "global", g))
    for g in groups:
      add(f"  {g:<14} {_f(report.grad_norms.get(g), '.3g'):>9} | "
          f"{_f(report.param_norms.get(g), '.4g'):>9}")

  n = report.norms
  add("\nModality norms")
  add(f"  ‖z_text‖₂ {_f(n['z_text'], '.4g')}   ‖x1‖₂ {_f(n['x1'], '.4g')}   "
      f"ratio {_f(n['ratio'], '.3f')}")

  add("\nText posterior")
  if post["mu_min"] is not None:
    add(f"  mu ∈ [{post['mu_min']:.3g}, {post['mu_max']:.3g}]  mean {_f(post['mu_mean'], '.3g')}")
  if post["logvar_min"] is not None:
    add(f"  log_var ∈ [{post['logvar_min']:.3g}, {post['logvar_max']:.3g}]  mean "
        f"{_f(post['logvar_mean'], '.3g')}  → var ∈ [{post['var_min']:.3g}, "
        f"{post['var_max']:.3g}]")
  if post["kl_per_dim"] is not None:
    add(f"  KL {post['kl_per_dim']:.3g} nats per latent dim ({post['latent_dims']:.0f} dims)")

  if report.buckets:
    add("\nFlow loss by t segment (t=0 text → t=1 image; latest | window mean | change)")
    for b in report.buckets:
      add(f"  [{b.t_lo:.2f}, {b.t_hi:.2f})  {_f(b.latest):>9} | {_f(b.window_mean):>9} | "
          f"{_pct(b.trend.rel_change if b.trend else None):>7}")

  if report.nonfinite["total"] is not None:
    add(f"\nNon-finite steps: {report.nonfinite['total']:.0f} "
        f"(+{report.nonfinite['grew_by'] or 0:.0f} in the window)")

  if report.eval:
    add("\nEval (latest)")
    for k, v in report.eval.items():
      add(f"  {k:<24} {v:.4g}")

  add("\nFlags")
  for f in report.flags:
    tag = "WARN" if f.severity == "warning" else "info"
    add(f"  [{tag}] {f.name}: {f.message}")
    if f.lever:
      add(f"         lever: {f.lever}")

  warnings = [f.name for f in report.warnings]
  add("\nVerdict: " + ("suspects, in order: " + ", ".join(dict.fromkeys(warnings))
                       if warnings else "nothing flagged."))
  return "\n".join(out) + "\n"


def _jsonable(x: Any) -> Any:
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return _jsonable(x.item())
  return x


def report_to_json(report: Report) -> dict[str, Any]:
  """The report as a JSON-ready dict (non-finite floats become null)."""
  return _jsonable(dataclasses.asdict(report))


# --------------------------------------------------------------------------------------------
# Plots.
# --------------------------------------------------------------------------------------------

def _plot_series(ax, metrics: Metrics, name: str, label: str, positive: bool = False,
                 **kw) -> bool:
  if name not in metrics:
    return False
  steps, values = metrics[name]
  keep = np.isfinite(values) & ((values > 0) if positive else True)
  ax.plot(steps[keep], values[keep], label=label, **kw)
  return True


def plot_run(metrics: Metrics, out_dir: str,
             config: Optional[Mapping[str, Any]] = None) -> list[str]:
  """Writes losses.png, lr.png, norms.png, posterior.png, t_buckets.png (those with data)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  paths = []

  def save(fig, name):
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)

  # Losses: one panel per component, the raw value thin and its EMA on top.
  names = [n for n in ["train/loss"] + [f"train/loss_{c}" for c in LOSS_COMPONENTS]
           + ["train/kl_raw"] if n in metrics or f"{n}_ema" in metrics]
  if names:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
      _plot_series(ax, metrics, name, "raw", lw=0.7, alpha=0.5, color="tab:blue")
      _plot_series(ax, metrics, f"{name}_ema", "EMA", lw=1.5, color="tab:red")
      ax.set_title(name)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names):]:
      ax.axis("off")
    save(fig, "losses.png")

  # LR per group on a log axis, the configured base dashed in the same colour.
  lr_names = sorted(n for n in metrics if n.startswith("train/lr/"))
  if lr_names:
    base = _group_lrs(config or {})
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(lr_names):
      color = f"C{i}"
      group = name[len("train/lr/"):]
      # A frozen group logs LR 0, which a log axis cannot show.
      _plot_series(ax, metrics, name, group, positive=True, color=color)
      if base.get(group):
        ax.axhline(base[group], color=color, ls="--", lw=0.8, label=f"{group} base")
    ax.set_yscale("log")
    ax.set_title("actual learning rate per group (dashed: configured base)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, "lr.png")

  # Modality norms and their ratio, with the healthy band shaded.
  if any(n in metrics for n in ("train/z_text_norm", "train/x1_norm", "train/norm_ratio")):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    _plot_series(ax1, metrics, "train/z_text_norm", "‖z_text‖₂")
    _plot_series(ax1, metrics, "train/x1_norm", "‖x1‖₂")
    ax1.set_title("mean per-example L2 norm")
    if not _plot_series(ax2, metrics, "train/norm_ratio", "‖z_text‖/‖x1‖"):
      if "train/z_text_norm" in metrics and "train/x1_norm" in metrics:
        (s, z), (s2, x) = metrics["train/z_text_norm"], metrics["train/x1_norm"]
        common, iz, ix = np.intersect1d(s, s2, return_indices=True)
        ax2.plot(common, z[iz] / x[ix], label="‖z_text‖/‖x1‖")
    ax2.axhspan(*NORM_RATIO_RANGE, color="tab:green", alpha=0.1, label="healthy band")
    ax2.set_title("norm ratio")
    for ax in (ax1, ax2):
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    save(fig, "norms.png")

  # Text posterior: ranges of mu and log_var.
  if any(f"train/{k}" in metrics for k in ("mu_min", "logvar_min")):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key in zip(axes, ("mu", "logvar")):
      for stat, ls in (("min", "--"), ("mean", "-"), ("max", "--")):
        _plot_series(ax, metrics, f"train/{key}_{stat}", stat, ls=ls)
      ax.set_title({"mu": "mu range", "logvar": "log_var range"}[key])
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    save(fig, "posterior.png")

  # Flow loss per t segment: curves over time, and the latest profile across t.
  bucket_names = sorted((n for n in metrics if _BUCKET_RE.match(n)),
                        key=lambda n: int(_BUCKET_RE.match(n).group(1)))
  if bucket_names:
    k = int(_BUCKET_RE.match(bucket_names[-1]).group(1)) + 1
    cmap = plt.get_cmap("viridis")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    latest = []
    for name in bucket_names:
      i = int(_BUCKET_RE.match(name).group(1))
      _plot_series(ax1, metrics, name, f"t∈[{i / k:.2f},{(i + 1) / k:.2f})",
                   color=cmap(i / max(k - 1, 1)), lw=1)
      latest.append((i, _latest(metrics, name)))
    ax1.set_title("flow loss per t segment (t=0 text, t=1 image)")
    ax1.set_xlabel("step")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    idx = [i for i, v in latest if v is not None]
    ax2.bar([(i + 0.5) / k for i in idx], [v for _, v in latest if v is not None],
            width=0.9 / k, color=[cmap(i / max(k - 1, 1)) for i in idx])
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("t")
    ax2.set_title("latest flow loss by t")
    ax2.grid(alpha=0.3, axis="y")
    save(fig, "t_buckets.png")

  return paths


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------

def run(workdir: str, out_dir: Optional[str] = None, window: int = DEFAULT_WINDOW) -> Report:
  """Everything the CLI does: analyse, print nothing, write report.{txt,json} and the PNGs."""
  metrics = load_metrics(workdir)
  if not metrics:
    raise MetricsNotFoundError(f"{workdir}/metrics.jsonl holds no log lines yet.")
  config = load_config(workdir)
  report = analyze(metrics, config, window, workdir=workdir, num_lines=count_lines(workdir))
  out_dir = out_dir or os.path.join(workdir, "diagnose")
  os.makedirs(out_dir, exist_ok=True)
  plot_run(metrics, out_dir, config)
  with open(os.path.join(out_dir, "report.txt"), "w") as f:
    f.write(format_report(report))
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report_to_json(report), f, indent=1, ensure_ascii=False)
  return report


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    report = run(f.workdir, f.out_dir, f.window)
  except MetricsNotFoundError as e:
    sys.stderr.write(f"diagnose: {e}\n")
    sys.exit(1)
  print(format_report(report), end="")
  print(f"\nwrote plots and report.json to {f.out_dir or os.path.join(f.workdir, 'diagnose')}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The run's workdir (holds metrics.jsonl, config.json).")
  flags.DEFINE_string("out_dir", None, "Where plots and report.json go; default W/diagnose.")
  flags.DEFINE_integer("window", DEFAULT_WINDOW,
                       "Trend window in training steps (the last N steps of the run).",
                       lower_bound=1)


if __name__ == "__main__":
  from txt2img_jax import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, required=["workdir"])
