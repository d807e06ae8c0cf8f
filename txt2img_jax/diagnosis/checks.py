"""The flags of the diagnosis: each check compares a number of the report with its threshold.

Each check appends to `flags` and returns the name of what it could not check.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from txt2img_jax.diagnosis.report import BucketInfo, Flag, LrInfo, Trend, fmt
from txt2img_jax.diagnosis.thresholds import (
    BUCKET_FAR_ABOVE,
    BUCKET_OTHERS_FALLING_REL,
    BUCKET_STUCK_REL,
    KL_PER_DIM_COLLAPSED,
    LEVER_LR_RESTART,
    LEVER_DISTANCE,
    LEVER_MOSAIC,
    LEVER_NONFINITE,
    LEVER_NORMS,
    LEVER_RISING,
    LEVER_TEXT_END,
    LEVER_TEXT_SIDE,
    LEVER_TIME_SAMPLING,
    LOGVAR_COLLAPSED_RANGE,
    LR_FAR_BELOW_RATIO,
    MOSAIC_BLOCKINESS,
    MOSAIC_RISE,
    DISTANCE_RISE,
    MU_COLLAPSED_ABS,
    NORM_RATIO_RANGE,
    PLATEAU_REL_CHANGE,
    RISING_REL_CHANGE,
)


def segment_name(b: BucketInfo) -> str:
  if b.t_lo == 0.0:
    where = "the text end"
  elif b.t_hi == 1.0:
    where = "the image end"
  else:
    where = "the middle"
  return f"t ∈ [{b.t_lo:.2f}, {b.t_hi:.2f}) (bucket {b.index}, {where})"


def _bucket_lever(b: BucketInfo) -> str:
  return LEVER_TEXT_END if b.index == 0 else LEVER_TIME_SAMPLING


def check_loss_trend(
    trends: dict[str, Trend], flags: list[Flag]
) -> Optional[str]:
  name = "train/loss_flow" if "train/loss_flow" in trends else "train/loss"
  trend = trends.get(name)
  if trend is None:
    return "plateau (no flow loss with enough points in the window)"
  pct = 100 * trend.rel_change
  span = f"over the last {trend.end_step - trend.start_step} steps"
  if trend.rel_change > RISING_REL_CHANGE:
    flags.append(
        Flag(
            "loss_rising",
            "warning",
            f"{name} rose {pct:+.1f}% {span} ({trend.first:.4g} → {trend.last:.4g}).",
            LEVER_RISING,
        )
    )
  elif (
      trend.rel_change > -PLATEAU_REL_CHANGE
      and trend.rel_change_ends > -PLATEAU_REL_CHANGE
  ):
    flags.append(
        Flag(
            "plateau",
            "warning",
            f"{name} is flat {span}: fitted change {pct:+.2f}% (ends {trend.first:.4g} → "
            f"{trend.last:.4g}), threshold −{100 * PLATEAU_REL_CHANGE:.0f}%.",
            f"in order: {LEVER_LR_RESTART}; {LEVER_TIME_SAMPLING}; {LEVER_TEXT_SIDE}",
        )
    )
  return None


def check_lr(lr: dict[str, LrInfo], flags: list[Flag]) -> Optional[str]:
  checked, low = False, []
  for g, info in lr.items():
    if info.ratio is None:
      continue
    checked = True
    if info.ratio >= LR_FAR_BELOW_RATIO:
      continue
    if info.warming_up:
      flags.append(
          Flag(
              "lr_warmup",
              "info",
              f"{g}: LR {info.actual:.3g} is {info.ratio:.2f}× base {info.base:.3g}, still rising "
              "(warmup).",
          )
      )
      continue
    low.append(
        f"{g} {info.actual:.3g} = {info.ratio:.2f}× base {info.base:.3g}"
    )
  if low:
    flags.append(
        Flag(
            "lr_far_below_base",
            "warning",
            "actual LR "
            + "; ".join(low)
            + f" (threshold {LR_FAR_BELOW_RATIO}×): the decay has "
            "left it too small to move the loss.",
            LEVER_LR_RESTART,
        )
    )
  return (
      None
      if checked
      else "lr_far_below_base (no train/lr/<group> with a base LR in config)"
  )


def check_posterior(
    post: dict[str, Optional[float]], flags: list[Flag]
) -> Optional[str]:
  reasons = []
  if (
      post["kl_per_dim"] is not None
      and post["kl_per_dim"] < KL_PER_DIM_COLLAPSED
  ):
    reasons.append(
        f"KL {post['kl_per_dim']:.3g} nats/dim < {KL_PER_DIM_COLLAPSED} "
        f"(kl_raw {post['kl_raw']:.4g} over {post['latent_dims']:.0f} dims)"
    )
  stats = [post[k] for k in ("mu_min", "mu_max", "logvar_min", "logvar_max")]
  if all(v is not None for v in stats):
    mu_min, mu_max, lv_min, lv_max = stats
    lo, hi = LOGVAR_COLLAPSED_RANGE
    if (
        lv_min >= lo
        and lv_max <= hi
        and max(abs(mu_min), abs(mu_max)) <= MU_COLLAPSED_ABS
    ):
      reasons.append(
          f"log_var ∈ [{lv_min:.2f}, {lv_max:.2f}] (var {math.exp(lv_min):.2f}–"
          f"{math.exp(lv_max):.2f}) within [{lo}, {hi}] and mu ∈ [{mu_min:.2f}, {mu_max:.2f}] "
          f"within ±{MU_COLLAPSED_ABS}"
      )
  elif post["kl_per_dim"] is None:
    return "posterior_collapsed (no mu/logvar statistics, and no kl_raw with latent_dims)"
  if reasons:
    flags.append(
        Flag(
            "posterior_collapsed",
            "warning",
            "text posterior ≈ N(0, I): "
            + "; ".join(reasons)
            + ". z_text carries little "
            "per-position information, so the flow learns colour statistics, not shapes.",
            LEVER_TEXT_SIDE,
        )
    )
  return None


def check_norms(
    norms: dict[str, Optional[float]], flags: list[Flag]
) -> Optional[str]:
  ratio = norms["ratio"]
  if ratio is None:
    return "norm_mismatch (no norm_ratio or z_text/x1 norms)"
  lo, hi = NORM_RATIO_RANGE
  if not lo <= ratio <= hi:
    flags.append(
        Flag(
            "norm_mismatch",
            "warning",
            f"‖z_text‖/‖x1‖ = {ratio:.3g} outside [{lo}, {hi}] (‖z_text‖ {fmt(norms['z_text'])}, "
            f"‖x1‖ {fmt(norms['x1'])}).",
            LEVER_NORMS,
        )
    )
  return None


def check_buckets(
    buckets: list[BucketInfo], flags: list[Flag]
) -> Optional[str]:
  if len(buckets) < 2:
    return "t_segment_stuck (fewer than 2 t buckets logged)"
  for b in buckets:
    others = [o for o in buckets if o.index != b.index]
    other_rel = [o.trend.rel_change for o in others if o.trend is not None]
    if (
        b.trend is not None
        and other_rel
        and b.trend.rel_change > -BUCKET_STUCK_REL
        and float(np.median(other_rel)) < -BUCKET_OTHERS_FALLING_REL
    ):
      flags.append(
          Flag(
              "t_segment_stuck",
              "warning",
              f"flow loss at {segment_name(b)} changed {100 * b.trend.rel_change:+.1f}% over the "
              f"window while the other segments fell {100 * float(np.median(other_rel)):.1f}% "
              "(median).",
              _bucket_lever(b),
          )
      )
      continue
    other_means = [o.window_mean for o in others if o.window_mean is not None]
    if b.window_mean is not None and other_means:
      median = float(np.median(other_means))
      if median > 0 and b.window_mean > BUCKET_FAR_ABOVE * median:
        flags.append(
            Flag(
                "t_segment_stuck",
                "warning",
                f"flow loss at {segment_name(b)} is {b.window_mean:.4g}, "
                f"{b.window_mean / median:.1f}× the median of the other segments ({median:.4g}).",
                _bucket_lever(b),
            )
        )
  return None


def check_nonfinite(
    nonfinite: dict[str, Optional[float]], flags: list[Flag]
) -> Optional[str]:
  total, grew = nonfinite["total"], nonfinite["grew_by"]
  if total is None:
    return "nonfinite_steps (no train/nonfinite_steps)"
  if grew:
    flags.append(
        Flag(
            "nonfinite_steps",
            "warning",
            f"{grew:.0f} non-finite step(s) in the window ({total:.0f} in the run).",
            LEVER_NONFINITE,
        )
    )
  elif total > 0:
    flags.append(
        Flag(
            "nonfinite_steps",
            "info",
            f"{total:.0f} non-finite step(s) earlier in the run, none in the window.",
        )
    )
  return None


def check_mosaic(
    mosaic: dict[str, Optional[float]], flags: list[Flag]
) -> Optional[str]:
  """Samples that fall apart along the token grid, above all while the val loss falls."""
  last = mosaic["blockiness"]
  if last is None:
    return "mosaic (no val/blockiness: the run's evaluator measures no samples against real images)"
  low, flow_then, flow_now = (
      mosaic["blockiness_min"],
      mosaic["flow_at_min"],
      mosaic["flow"],
  )
  rose = (
      low is not None
      and low > 0
      and last > MOSAIC_RISE * low
      and mosaic["min_step"] != mosaic["step"]
  )
  fell = flow_then is not None and flow_now is not None and flow_now < flow_then
  hf = (
      ""
      if mosaic["hf"] is None
      else f", high-frequency energy {mosaic['hf']:.2f}×"
  )
  what = (
      f"samples at step {mosaic['step']} have blockiness {last:.2f}× the real images' "
      f"(token-grid edges against the inside of tokens{hf})"
  )
  signature = ""
  if rose and fell:
    signature = (
        f"; it rose from {low:.2f} at step {mosaic['min_step']} while val/flow fell "
        f"{flow_then:.4g} → {flow_now:.4g}: the loss says improving while the images "
        "come apart (the seed's mosaic)"
    )
  if last > MOSAIC_BLOCKINESS:
    flags.append(
        Flag(
            "mosaic",
            "warning",
            f"{what}, above {MOSAIC_BLOCKINESS}: a mosaic of token-sized blocks"
            f"{signature}.",
            LEVER_MOSAIC,
        )
    )
  elif rose and fell:
    flags.append(
        Flag("mosaic_rising", "warning", f"{what}{signature}.", LEVER_MOSAIC)
    )
  return None


def check_distance(
    distance: dict[str, Any], flags: list[Flag]
) -> Optional[str]:
  """The samples moving away from the real images (KID up) while the val loss falls."""
  last = distance["kid"]
  if last is None:
    return None  # Runs without FD/KID (the shapes world) are judged by their benchmark.
  low, std = distance["kid_min"], distance["kid_std"] or 0.0
  flow_then, flow_now = distance["flow_at_min"], distance["flow"]
  rose = (
      distance["min_step"] != distance["step"]
      and last > DISTANCE_RISE * max(low, 0.0)
      and last - low > 2.0 * std
  )
  fell = flow_then is not None and flow_now is not None and flow_now < flow_then
  if rose and fell:
    net = distance["net"]
    flags.append(
        Flag(
            "distance_rising",
            "warning",
            f"the KID ({net} features) of the samples against real images rose from "
            f"{low:.4g} at step {distance['min_step']} to {last:.4g} at step "
            f"{distance['step']} (± {std:.2g}) while val/flow fell {flow_then:.4g} → "
            f"{flow_now:.4g}: the samples leave the data while the loss says improving.",
            LEVER_DISTANCE,
        )
    )
  return None


def check_metrics_order(
    problems: list[tuple[int, str, int, int]], flags: list[Flag]
) -> Optional[str]:
  """Steps that go back inside metrics.jsonl: two writers, or an edit."""
  if not problems:
    return None
  row, name, step, before = problems[0]
  flags.append(
      Flag(
          "metrics_order",
          "warning",
          f"metrics.jsonl logs {len(problems)} value(s) at a step not after "
          f"the one before (first: row {row}, {name} at step {step} after "
          f"step {before}): two processes wrote this run, or the file was "
          "edited. Curves keep the last value per step.",
          "Keep one process per workdir (a second one now stops at start); "
          "check which run the checkpoints are from.",
      )
  )
  return None
