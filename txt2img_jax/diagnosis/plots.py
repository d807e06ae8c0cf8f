"""The diagnosis plots: losses, learning rates, modality norms, text posterior, t segments."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from txt2img_jax.diagnosis import analysis as diagnose_analysis
from txt2img_jax.diagnosis import series as diagnose_series
from txt2img_jax.diagnosis.logs import Metrics
from txt2img_jax.diagnosis.thresholds import BUCKET_RE, LOSS_COMPONENTS, NORM_RATIO_RANGE
from txt2img_jax.utils import paths


def _plot_series(
    ax, metrics: Metrics, name: str, label: str, positive: bool = False, **kw
) -> bool:
  if name not in metrics:
    return False
  steps, values = metrics[name]
  keep = np.isfinite(values) & ((values > 0) if positive else True)
  ax.plot(steps[keep], values[keep], label=label, **kw)
  return True


def plot_run(
    metrics: Metrics, out_dir: str, config: Optional[Mapping[str, Any]] = None
) -> list[str]:
  """Writes losses.png, lr.png, norms.png, posterior.png, t_buckets.png (those with data)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths.makedirs(out_dir)
  written = []

  def save(fig, name):
    path = paths.join(out_dir, name)
    fig.tight_layout()
    paths.write_with(path, fig.savefig, dpi=100, format="png")
    plt.close(fig)
    written.append(path)

  # Losses: one panel per component, the raw value thin and its EMA on top.
  names = [
      n
      for n in ["train/loss"]
      + [f"train/loss_{c}" for c in LOSS_COMPONENTS]
      + ["train/kl_raw"]
      if n in metrics or f"{n}_ema" in metrics
  ]
  if names:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False
    )
    for ax, name in zip(axes.flat, names):
      _plot_series(
          ax, metrics, name, "raw", lw=0.7, alpha=0.5, color="tab:blue"
      )
      _plot_series(ax, metrics, f"{name}_ema", "EMA", lw=1.5, color="tab:red")
      ax.set_title(name)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
      ax.axis("off")
    save(fig, "losses.png")

  # LR per group on a log axis, the configured base dashed in the same colour.
  lr_names = sorted(n for n in metrics if n.startswith("train/lr/"))
  if lr_names:
    base = diagnose_analysis.group_lrs(config or {})
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(lr_names):
      color = f"C{i}"
      group = name[len("train/lr/") :]
      # A frozen group logs LR 0, which a log axis cannot show.
      _plot_series(ax, metrics, name, group, positive=True, color=color)
      if base.get(group):
        ax.axhline(
            base[group], color=color, ls="--", lw=0.8, label=f"{group} base"
        )
    ax.set_yscale("log")
    ax.set_title("actual learning rate per group (dashed: configured base)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, "lr.png")

  # Modality norms and their ratio, with the healthy band shaded.
  if any(
      n in metrics
      for n in ("train/z_text_norm", "train/x1_norm", "train/norm_ratio")
  ):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    _plot_series(ax1, metrics, "train/z_text_norm", "‖z_text‖₂")
    _plot_series(ax1, metrics, "train/x1_norm", "‖x1‖₂")
    ax1.set_title("mean per-example L2 norm")
    if not _plot_series(ax2, metrics, "train/norm_ratio", "‖z_text‖/‖x1‖"):
      if "train/z_text_norm" in metrics and "train/x1_norm" in metrics:
        (s, z), (s2, x) = metrics["train/z_text_norm"], metrics["train/x1_norm"]
        common, iz, ix = np.intersect1d(s, s2, return_indices=True)
        ax2.plot(common, z[iz] / x[ix], label="‖z_text‖/‖x1‖")
    ax2.axhspan(
        *NORM_RATIO_RANGE, color="tab:green", alpha=0.1, label="healthy band"
    )
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
  bucket_names = sorted(
      (n for n in metrics if BUCKET_RE.match(n)),
      key=lambda n: int(BUCKET_RE.match(n).group(1)),
  )
  if bucket_names:
    k = int(BUCKET_RE.match(bucket_names[-1]).group(1)) + 1
    cmap = plt.get_cmap("viridis")
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]}
    )
    latest = []
    for name in bucket_names:
      i = int(BUCKET_RE.match(name).group(1))
      _plot_series(
          ax1,
          metrics,
          name,
          f"t∈[{i / k:.2f},{(i + 1) / k:.2f})",
          color=cmap(i / max(k - 1, 1)),
          lw=1,
      )
      latest.append((i, diagnose_series.latest(metrics, name)))
    ax1.set_title("flow loss per t segment (t=0 text, t=1 image)")
    ax1.set_xlabel("step")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    idx = [i for i, v in latest if v is not None]
    ax2.bar(
        [(i + 0.5) / k for i in idx],
        [v for _, v in latest if v is not None],
        width=0.9 / k,
        color=[cmap(i / max(k - 1, 1)) for i in idx],
    )
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("t")
    ax2.set_title("latest flow loss by t")
    ax2.grid(alpha=0.3, axis="y")
    save(fig, "t_buckets.png")

  return written
