"""Reads a run's logs and writes the diagnosis a person would otherwise write by hand.

The report follows the note in shared/run-diagnosis.zh.md: iteration, loss split, actual vs
configured learning rate per group, modality norms, text-posterior statistics, flow loss per t
segment, non-finite steps, and a list of flags, each naming the config switch that addresses it.

    python -m txt2img_jax.diagnose --workdir=W [--out_dir=D] [--window=N]

Everything a test or a notebook needs is importable from here: `load_metrics`, `load_config`,
`analyze`, `format_report`, `report_to_json`, `plot_run`, `run`, and every threshold and lever.
They live in modules that import one way only: each imports only modules to its right.

    diagnose (this entry) -> diagnose_plots -> diagnose_analysis -> diagnose_checks
        -> diagnose_report -> diagnose_thresholds

The package reads only `W/metrics.jsonl` and `W/config.json`; it imports neither jax nor the
model, so it runs anywhere the logs are. Thresholds are documented in docs/diagnostics.md.
"""

from __future__ import annotations

import json
import os
from typing import Optional

# The public API, gathered in one namespace for tests and notebooks.
# pylint: disable=unused-import
from txt2img_jax.diagnose_analysis import (
    Metrics, MetricsNotFoundError, Series, analyze, count_lines, effective_window, fit_trend,
    load_config, load_metrics)
from txt2img_jax.diagnose_checks import segment_name
from txt2img_jax.diagnose_plots import plot_run
from txt2img_jax.diagnose_report import (
    BucketInfo, Flag, LrInfo, Report, Trend, format_report, report_to_json)
from txt2img_jax.diagnose_thresholds import (
    BUCKET_FAR_ABOVE, BUCKET_OTHERS_FALLING_REL, BUCKET_STUCK_REL, DEFAULT_WINDOW,
    KL_PER_DIM_COLLAPSED, LEVER_LR_RESTART, LEVER_NONFINITE, LEVER_NORMS, LEVER_RISING,
    LEVER_TEXT_END, LEVER_TEXT_SIDE, LEVER_TIME_SAMPLING, LOGVAR_COLLAPSED_RANGE,
    LOSS_COMPONENTS, LR_FAR_BELOW_RATIO, LR_WARMUP_RISE, MIN_TREND_POINTS, MU_COLLAPSED_ABS,
    NORM_RATIO_RANGE, PLATEAU_REL_CHANGE, RISING_REL_CHANGE)
# pylint: enable=unused-import


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
  report = run(f.workdir, f.out_dir, f.window)  # cli.run reports errors.
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
