"""Reading a run's logs: the diagnosis a person would otherwise write by hand.

The report follows the note in shared/run-diagnosis.zh.md: iteration, loss split, actual vs
configured learning rate per group, modality norms, text-posterior statistics, flow loss per t
segment, non-finite steps, the mosaic measures, and a list of flags, each naming the config
switch that addresses it. Its command is `python -m txt2img_jax.diagnose`.

Everything a test or a notebook needs is importable from here: `load_metrics`, `load_config`,
`analyze`, `format_report`, `report_to_json`, `plot_run`, `run`, and every threshold and lever.
They live in modules that import one way only: each imports only modules to its right.

    diagnosis (this face) -> plots -> analysis -> series -> logs -> checks -> report -> thresholds

The package reads only `W/metrics.jsonl` and `W/config.json`; it imports neither jax nor the
model, so it runs anywhere the logs are. Thresholds are documented in docs/diagnostics.md.
"""

from __future__ import annotations

import json
from typing import Optional

# The public API, gathered in one namespace for tests and notebooks.
# pylint: disable=unused-import
from txt2img_jax.diagnosis.analysis import analyze
from txt2img_jax.diagnosis.checks import segment_name
from txt2img_jax.diagnosis.logs import (
    Metrics,
    MetricsNotFoundError,
    Series,
    count_lines,
    load_config,
    load_metrics,
)
from txt2img_jax.diagnosis.plots import plot_run
from txt2img_jax.diagnosis.report import (
    BucketInfo,
    Flag,
    LrInfo,
    Report,
    Trend,
    format_report,
    report_to_json,
)
from txt2img_jax.diagnosis.series import effective_window, fit_trend
from txt2img_jax.diagnosis.thresholds import (
    BUCKET_FAR_ABOVE,
    BUCKET_OTHERS_FALLING_REL,
    BUCKET_STUCK_REL,
    DEFAULT_WINDOW,
    KL_PER_DIM_COLLAPSED,
    LEVER_LR_RESTART,
    LEVER_NONFINITE,
    LEVER_NORMS,
    LEVER_RISING,
    LEVER_TEXT_END,
    LEVER_TEXT_SIDE,
    LEVER_TIME_SAMPLING,
    LOGVAR_COLLAPSED_RANGE,
    LOSS_COMPONENTS,
    LR_FAR_BELOW_RATIO,
    LR_WARMUP_RISE,
    MIN_TREND_POINTS,
    MU_COLLAPSED_ABS,
    NORM_RATIO_RANGE,
    PLATEAU_REL_CHANGE,
    RISING_REL_CHANGE,
)

# pylint: enable=unused-import
from txt2img_jax.utils import paths


def run(
    workdir: str, out_dir: Optional[str] = None, window: int = DEFAULT_WINDOW
) -> Report:
  """Everything the CLI does: analyse, print nothing, write report.{txt,json} and the PNGs."""
  metrics = load_metrics(workdir)
  if not metrics:
    raise MetricsNotFoundError(
        f"{workdir}/metrics.jsonl holds no log lines yet."
    )
  config = load_config(workdir)
  report = analyze(
      metrics, config, window, workdir=workdir, num_lines=count_lines(workdir)
  )
  out_dir = out_dir or paths.join(workdir, "diagnose")
  paths.makedirs(out_dir)
  plot_run(metrics, out_dir, config)
  paths.write_text(paths.join(out_dir, "report.txt"), format_report(report))
  paths.write_text(
      paths.join(out_dir, "report.json"),
      json.dumps(report_to_json(report), indent=1, ensure_ascii=False),
  )
  return report
