"""The diagnosis report: its structure, as text a person reads, and as JSON.

`analysis.analyze` fills a `Report`; this module only lays it out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

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
  losses: dict[
      str, dict[str, Optional[float]]
  ]  # component -> value, ema, share of total.
  lr: dict[str, LrInfo]
  grad_norms: dict[str, float]  # "global" and per group.
  param_norms: dict[str, float]
  norms: dict[str, Optional[float]]  # z_text, x1, ratio.
  posterior: dict[str, Optional[float]]
  trends: dict[str, Trend]
  buckets: list[BucketInfo]
  nonfinite: dict[str, Optional[float]]  # total, grew_by (within the window).
  steps_per_sec: Optional[float]
  eval: dict[str, float]  # The latest eval/ and val/ numbers.
  mosaic: dict[
      str, Optional[float]
  ]  # Blockiness of the samples over the run (check_mosaic).
  distance: dict[str, Any]  # KID of the samples over the run (check_distance).
  flags: list[Flag]

  @property
  def warnings(self) -> list[Flag]:
    return [f for f in self.flags if f.severity == "warning"]


# --------------------------------------------------------------------------------------------
# Text and JSON.
# --------------------------------------------------------------------------------------------


def fmt(x: Optional[float], fmt: str = "#.4g") -> str:
  return "—" if x is None else format(x, fmt)


def _pct(x: Optional[float]) -> str:
  return "—" if x is None else f"{100 * x:+.1f}%"


def format_report(report: Report) -> str:
  """A readable report with the note's sections; numbers at the precision one would quote."""
  out = []
  add = out.append
  add(f"Run diagnosis: {report.workdir or '(metrics)'}")
  add(
      f"iteration {report.step} (logged from step {report.first_step}, {report.num_lines} lines)"
      f"; {fmt(report.steps_per_sec, '.3g')} steps/s; trend window: last {report.window} steps"
  )

  add("\nLosses (latest | EMA | share of total | change over window)")
  for comp, row in report.losses.items():
    trend = report.trends.get(
        "train/loss" if comp == "total" else f"train/loss_{comp}"
    )
    share = "" if row["share"] is None else f"{100 * row['share']:5.1f}%"
    add(
        f"  {comp:<6} {fmt(row['value']):>10} | {fmt(row['ema']):>10} | {share:>6} | "
        f"{_pct(trend.rel_change if trend else None):>7}"
    )
  post = report.posterior
  if post["kl_raw"] is not None:
    add(
        f"  kl_raw {fmt(post['kl_raw'])} × kl_weight {fmt(post['kl_weight'], '.3g')}"
        + (
            f" (kl_raw trend {_pct(report.trends['train/kl_raw'].rel_change)})"
            if "train/kl_raw" in report.trends
            else ""
        )
    )
  clip_w = report.latest.get("train/clip_weight")
  if clip_w is not None:
    add(f"  clip_weight {clip_w:.3g}")

  if report.lr:
    add("\nLearning rate (actual | configured base | ratio)")
    for g, i in report.lr.items():
      note = "  (warming up)" if i.warming_up else ""
      add(
          f"  {g:<14} {fmt(i.actual, '.3g'):>9} | {fmt(i.base, '.3g'):>9} | "
          f"{fmt(i.ratio, '.3g')}×{note}"
      )

  if report.grad_norms or report.param_norms:
    add("\nGradient | parameter norms")
    groups = sorted(
        set(report.grad_norms) | set(report.param_norms),
        key=lambda g: (g != "global", g),
    )
    for g in groups:
      add(
          f"  {g:<14} {fmt(report.grad_norms.get(g), '.3g'):>9} | "
          f"{fmt(report.param_norms.get(g), '.4g'):>9}"
      )

  n = report.norms
  add("\nModality norms")
  add(
      f"  ‖z_text‖₂ {fmt(n['z_text'], '.4g')}   ‖x1‖₂ {fmt(n['x1'], '.4g')}   "
      f"ratio {fmt(n['ratio'], '.3f')}"
  )

  add("\nText posterior")
  if post["mu_min"] is not None:
    add(
        f"  mu ∈ [{post['mu_min']:.3g}, {post['mu_max']:.3g}]  mean {fmt(post['mu_mean'], '.3g')}"
    )
  if post["logvar_min"] is not None:
    add(
        f"  log_var ∈ [{post['logvar_min']:.3g}, {post['logvar_max']:.3g}]  mean "
        f"{fmt(post['logvar_mean'], '.3g')}  → var ∈ [{post['var_min']:.3g}, "
        f"{post['var_max']:.3g}]"
    )
  if post["kl_per_dim"] is not None:
    add(
        f"  KL {post['kl_per_dim']:.3g} nats per latent dim ({post['latent_dims']:.0f} dims)"
    )

  if report.buckets:
    add(
        "\nFlow loss by t segment (t=0 text → t=1 image; latest | window mean | change)"
    )
    for b in report.buckets:
      add(
          f"  [{b.t_lo:.2f}, {b.t_hi:.2f})  {fmt(b.latest):>9} | {fmt(b.window_mean):>9} | "
          f"{_pct(b.trend.rel_change if b.trend else None):>7}"
      )

  if report.nonfinite["total"] is not None:
    add(
        f"\nNon-finite steps: {report.nonfinite['total']:.0f} "
        f"(+{report.nonfinite['grew_by'] or 0:.0f} in the window)"
    )

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
  add(
      "\nVerdict: "
      + (
          "suspects, in order: " + ", ".join(dict.fromkeys(warnings))
          if warnings
          else "nothing flagged."
      )
  )
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
