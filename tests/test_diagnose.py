"""The diagnosis on synthetic logs: the note's plateaued run, a healthy run, and single faults."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from txt2img_jax import diagnosis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_LR = 2.5e-6
LATENT_DIMS = 32 * 32 * 4
STEPS = np.arange(0, 20001, 100)


def _write_run(workdir, lines, config):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for line in lines:
      f.write(json.dumps(line) + "\n")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  return str(workdir)


def _config():
  return {
      "total_steps": 20000,
      "latent_dims": LATENT_DIMS,
      "optim": {
          "groups": {"text_head": {"lr": BASE_LR}, "flow": {"lr": BASE_LR}}
      },
  }


def _lines(
    flow,
    lr,
    kl_raw,
    logvar=(-0.44, 0.02),
    mu=(-1.15, 1.28),
    buckets=None,
    nonfinite=None,
    seed=0,
):
  """One log line per step in STEPS, the shape of what the trainer writes."""
  rng = np.random.default_rng(seed)
  lines, ema = [], {}
  for i, step in enumerate(STEPS):
    f = float(flow[i] * (1 + 0.003 * rng.standard_normal()))
    kl_w = 1e-3
    line = {
        "step": int(step),
        "train/loss_flow": f,
        "train/kl_raw": float(kl_raw[i]),
        "train/kl_weight": kl_w,
        "train/loss_kl": kl_w * float(kl_raw[i]),
        "train/loss_clip": 0.01,
        "train/clip_weight": 1.0,
    }
    line["train/loss"] = f + line["train/loss_kl"] + line["train/loss_clip"]
    for k in ("train/loss", "train/loss_flow", "train/loss_kl"):
      ema[k] = line[k] if k not in ema else 0.9 * ema[k] + 0.1 * line[k]
      line[k + "_ema"] = ema[k]
    for g in ("text_head", "flow"):
      line[f"train/lr/{g}"] = float(lr[i])
      line[f"train/grad_norm/{g}"] = 0.5
      line[f"train/param_norm/{g}"] = 100.0
    line.update(
        {
            "train/grad_norm": 0.7,
            "train/z_text_norm": 70.0,
            "train/x1_norm": 71.0,
            "train/norm_ratio": 70.0 / 71.0,
            "train/mu_min": mu[0],
            "train/mu_max": mu[1],
            "train/mu_mean": 0.01,
            "train/logvar_min": logvar[0],
            "train/logvar_max": logvar[1],
            "train/logvar_mean": -0.2,
            "train/steps_per_sec": 3.2,
        }
    )
    if buckets is not None:
      for b, series in enumerate(buckets):
        line[f"train/loss_flow_bucket/{b}"] = float(series[i])
    if nonfinite is not None:
      line["train/nonfinite_steps"] = float(nonfinite[i])
    lines.append(line)
    if step % 2000 == 0:  # Eval lines hold only eval names.
      lines.append(
          {"step": int(step), "eval/object_acc": 0.1, "eval/mosaic_index": 0.8}
      )
  return lines


def _plateau_run(workdir):
  """The note's run: flow ≈ 0.92 after an early drop, LR decayed to 0.1× base, KL ≈ 70."""
  flow = 0.92 + 0.6 * np.exp(-STEPS / 1500)
  lr = np.maximum(BASE_LR * 0.5 * (1 + np.cos(np.pi * STEPS / 20000)), 2.5e-7)
  kl = 70 + 30 * np.exp(-STEPS / 5000)
  return _write_run(workdir, _lines(flow, lr, kl), _config())


def _healthy_run(workdir, buckets=None, nonfinite=None):
  """Flow loss still falling steadily, LR at base, an informative posterior."""
  flow = 0.3 + 1.2 * np.exp(-STEPS / 15000)
  lr = np.full(STEPS.shape, BASE_LR)
  kl = np.full(STEPS.shape, 2000.0)
  lines = _lines(
      flow,
      lr,
      kl,
      logvar=(-4.0, 0.5),
      mu=(-3.0, 3.2),
      buckets=buckets,
      nonfinite=nonfinite,
  )
  return _write_run(workdir, lines, _config())


def _names(report, severity="warning"):
  return {f.name for f in report.flags if f.severity == severity}


def _run(workdir, window=5000):
  metrics = diagnosis.load_metrics(workdir)
  return diagnosis.analyze(
      metrics, diagnosis.load_config(workdir), window, workdir=workdir
  )


def test_plateau_run_raises_the_notes_flags(tmp_path):
  report = _run(_plateau_run(tmp_path / "w"))
  assert {"plateau", "lr_far_below_base", "posterior_collapsed"} <= _names(
      report
  )
  assert "norm_mismatch" not in _names(report)
  assert report.step == 20000
  assert report.lr["flow"].ratio == pytest.approx(0.1)
  assert report.posterior["kl_per_dim"] == pytest.approx(
      70 / LATENT_DIMS, rel=0.05
  )
  assert report.posterior["var_max"] == pytest.approx(np.exp(0.02))
  assert report.eval["object_acc"] == pytest.approx(0.1)
  lr_flag = next(f for f in report.flags if f.name == "lr_far_below_base")
  assert "configs/restart.py" in lr_flag.lever
  text = diagnosis.format_report(report)
  for section in (
      "Losses",
      "Learning rate",
      "Modality norms",
      "Text posterior",
      "Flags",
  ):
    assert section in text
  assert "plateau" in text.split("Verdict:")[1]


def test_healthy_run_has_no_plateau_and_no_lr_flag(tmp_path):
  report = _run(_healthy_run(tmp_path / "w"))
  assert not _names(report)
  assert "ok" in _names(report, "info")
  assert (
      report.trends["train/loss_flow"].rel_change
      < -diagnosis.PLATEAU_REL_CHANGE
  )


def test_stuck_bucket_is_named(tmp_path):
  falling = 0.3 + 1.2 * np.exp(-STEPS / 15000)
  buckets = [
      1.3 * falling,
      1.1 * falling,
      np.full(STEPS.shape, 0.8),
      0.7 * falling,
  ]
  report = _run(_healthy_run(tmp_path / "w", buckets=buckets))
  stuck = [f for f in report.flags if f.name == "t_segment_stuck"]
  assert len(stuck) == 1
  assert "[0.50, 0.75)" in stuck[0].message and "bucket 2" in stuck[0].message
  assert "configs/logsnr.py" in stuck[0].lever


def test_bucket_far_above_the_others(tmp_path):
  falling = 0.3 + 1.2 * np.exp(-STEPS / 15000)
  buckets = [5 * falling, falling, falling, falling]
  report = _run(_healthy_run(tmp_path / "w", buckets=buckets))
  stuck = [f for f in report.flags if f.name == "t_segment_stuck"]
  assert len(stuck) == 1 and "text end" in stuck[0].message
  # The text end gets the lever that trains it, not the note's alpha > 0.8.
  assert stuck[0].lever == diagnosis.LEVER_TEXT_END


def test_nonfinite_steps_growth_is_flagged(tmp_path):
  nonfinite = np.where(STEPS >= 18000, 3.0, np.where(STEPS >= 5000, 1.0, 0.0))
  report = _run(_healthy_run(tmp_path / "w", nonfinite=nonfinite))
  assert _names(report) == {"nonfinite_steps"}
  assert report.nonfinite == {"total": 3.0, "grew_by": 2.0}


def test_old_nonfinite_steps_are_only_info(tmp_path):
  nonfinite = np.where(STEPS >= 5000, 1.0, 0.0)
  report = _run(_healthy_run(tmp_path / "w", nonfinite=nonfinite))
  assert not _names(report) and "nonfinite_steps" in _names(report, "info")


def test_rising_loss_is_not_a_plateau(tmp_path):
  workdir = _healthy_run(tmp_path / "w")
  metrics = diagnosis.load_metrics(workdir)
  steps, flow = metrics["train/loss_flow"]
  metrics["train/loss_flow"] = (
      steps,
      flow * (1 + np.maximum(steps - 15000, 0) / 5000),
  )
  report = diagnosis.analyze(metrics, diagnosis.load_config(workdir), 5000)
  assert _names(report) == {"loss_rising"}


def test_short_run_uses_its_later_half(tmp_path):
  workdir = _plateau_run(tmp_path / "w")
  metrics = diagnosis.load_metrics(workdir)
  short = {n: (s[s <= 6000], v[s <= 6000]) for n, (s, v) in metrics.items()}
  report = diagnosis.analyze(short, diagnosis.load_config(workdir), 5000)
  assert report.window == 3000
  assert report.trends["train/loss_flow"].start_step == 3000


def test_norm_mismatch(tmp_path):
  workdir = _healthy_run(tmp_path / "w")
  metrics = diagnosis.load_metrics(workdir)
  steps, ratio = metrics["train/norm_ratio"]
  metrics["train/norm_ratio"] = (steps, ratio * 3)
  report = diagnosis.analyze(metrics, diagnosis.load_config(workdir), 5000)
  assert _names(report) == {"norm_mismatch"}


def test_warmup_is_not_far_below_base(tmp_path):
  workdir = _healthy_run(tmp_path / "w")
  metrics = diagnosis.load_metrics(workdir)
  for g in ("flow", "text_head"):
    steps, _ = metrics[f"train/lr/{g}"]
    metrics[f"train/lr/{g}"] = (steps, BASE_LR * 0.05 * (1 + steps / 20000))
  report = diagnosis.analyze(metrics, diagnosis.load_config(workdir), 5000)
  assert "lr_far_below_base" not in _names(report)
  assert "lr_warmup" in _names(report, "info")


def test_load_metrics_keeps_the_latest_value_of_a_relogged_step(tmp_path):
  workdir = tmp_path / "w"
  os.makedirs(workdir)
  with open(workdir / "metrics.jsonl", "w") as f:
    f.write(
        '{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": NaN}\n'
        '{"step": 1, "train/loss": 1.5}\n{"step": 3, "train/lo'
    )  # Killed mid-write.
  metrics = diagnosis.load_metrics(str(workdir))
  steps, values = metrics["train/loss"]
  assert steps.tolist() == [1, 2] and values[0] == 1.5 and np.isnan(values[1])
  report = diagnosis.analyze(metrics, {}, 5000)
  assert report.latest["train/loss"] == 1.5
  json.dumps(diagnosis.report_to_json(report), allow_nan=False)


def test_cli_end_to_end(tmp_path):
  workdir = _plateau_run(tmp_path / "w")
  out = tmp_path / "out"
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.diagnose",
          f"--workdir={workdir}",
          f"--out_dir={out}",
          "--window=4000",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "lr_far_below_base" in result.stdout
  for png in ("losses.png", "lr.png", "norms.png", "posterior.png"):
    assert os.path.getsize(out / png) > 1000
  report = json.loads((out / "report.json").read_text())
  assert report["step"] == 20000 and report["window"] == 4000
  assert {"plateau", "lr_far_below_base", "posterior_collapsed"} <= {
      f["name"] for f in report["flags"]
  }


def test_plot_run_writes_t_buckets(tmp_path):
  falling = 0.3 + 1.2 * np.exp(-STEPS / 15000)
  workdir = _healthy_run(
      tmp_path / "w", buckets=[falling * (1 + b) for b in range(4)]
  )
  paths = diagnosis.plot_run(
      diagnosis.load_metrics(workdir), str(tmp_path / "d"), _config()
  )
  assert sorted(os.path.basename(p) for p in paths) == [
      "losses.png",
      "lr.png",
      "norms.png",
      "posterior.png",
      "t_buckets.png",
  ]


def test_cli_without_metrics_gives_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "txt2img_jax.diagnose", f"--workdir={tmp_path}"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert result.returncode == 1
  assert "no metrics.jsonl" in result.stderr
  assert "Traceback" not in result.stderr
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(diagnosis.MetricsNotFoundError, match="no log lines"):
    diagnosis.run(str(tmp_path))


def _with_val(workdir, blockiness, flow, hf=None):
  """Adds the folder evaluator's val lines (every 500 steps) to a healthy run."""
  _healthy_run(workdir)
  steps = 500 * np.arange(1, len(blockiness) + 1)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    for i, s in enumerate(steps):
      line = {
          "step": int(s),
          "val/flow": float(flow[i]),
          "val/blockiness": float(blockiness[i]),
      }
      if hf is not None:
        line["val/hf"] = float(hf[i])
      f.write(json.dumps(line) + "\n")
  return str(workdir)


def test_mosaic_while_val_loss_falls_is_the_seeds_signature(tmp_path):
  # What the old folder recipe did on the digits: blocks grow, val/flow falls.
  w = _with_val(
      tmp_path / "w",
      [1.3, 1.6, 2.0, 2.4],
      [0.19, 0.11, 0.086, 0.079],
      hf=[2.0, 3.0, 4.0, 5.0],
  )
  report = _run(w)
  flag = next(f for f in report.flags if f.name == "mosaic")
  assert flag.severity == "warning"
  assert (
      "2.40×" in flag.message and "rose from 1.30 at step 500" in flag.message
  )
  assert "0.19 → 0.079" in flag.message and "out_head=overlap" in flag.lever
  assert "val/blockiness" in report.eval
  assert "mosaic" in diagnosis.format_report(report)


def _with_kid(workdir, kid, flow, std=0.0005):
  """A healthy run whose folder evaluations logged KID (every 150 steps)."""
  _healthy_run(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    for i, (k, v) in enumerate(zip(kid, flow)):
      f.write(
          json.dumps(
              {
                  "step": 150 * (i + 1),
                  "val/flow": v,
                  "val/kid_alexnet": k,
                  "val/kid_alexnet_std": std,
                  "val/fd_alexnet": 100 * k,
              }
          )
          + "\n"
      )
  return str(workdir)


def test_kid_rising_while_val_loss_falls_is_flagged(tmp_path):
  # The digits with velocity prediction (docs/own_images.md): KID rose
  # while val/flow fell.
  flow = [0.302, 0.186, 0.143, 0.124]
  report = _run(
      _with_kid(tmp_path / "a", [0.0129, 0.0192, 0.0218, 0.0231], flow)
  )
  flag = next(f for f in report.flags if f.name == "distance_rising")
  assert flag.severity == "warning"
  assert "0.0129 at step 150 to 0.0231 at step 600" in flag.message
  assert "flow.predict=image" in flag.lever
  assert report.eval["val/fd_alexnet"] == pytest.approx(2.31)
  text = diagnosis.format_report(report)
  assert "distance_rising" in text and "val/kid_alexnet" in text
  # Falling KID, or a rise within its own noise, is no flag.
  for kid, std in (
      ([0.02, 0.015, 0.012, 0.011], 0.0005),
      ([1e-4, 3e-4, 2e-4, 4e-4], 0.001),
  ):
    names = {
        f.name
        for f in _run(_with_kid(tmp_path / f"b{std}", kid, flow, std)).flags
    }
    assert "distance_rising" not in names


def test_smooth_samples_raise_no_mosaic_flag(tmp_path):
  w = _with_val(
      tmp_path / "w", [1.05, 0.98, 1.02, 1.0], [0.19, 0.11, 0.086, 0.079]
  )
  names = {f.name for f in _run(w).flags}
  assert not names & {"mosaic", "mosaic_rising"}


def test_rising_blockiness_below_the_threshold_is_flagged(tmp_path):
  w = _with_val(
      tmp_path / "w", [0.95, 1.1, 1.3, 1.4], [0.19, 0.11, 0.086, 0.079]
  )
  assert "mosaic_rising" in _names(_run(w))
  # The same rise with a val loss that rose too is not the signature.
  w = _with_val(tmp_path / "v", [0.95, 1.1, 1.3, 1.4], [0.08, 0.09, 0.1, 0.12])
  assert not _names(_run(w)) & {"mosaic", "mosaic_rising"}


def test_a_run_without_sample_measures_says_so(tmp_path):
  report = _run(_healthy_run(tmp_path / "w"))
  skipped = next(f for f in report.flags if f.name == "not_checked")
  assert "mosaic (no val/blockiness" in skipped.message


def test_steps_that_go_back_in_the_metrics_file_are_flagged(tmp_path):
  # What two processes on one workdir leave: two interleaved series.
  workdir = _healthy_run(tmp_path / "w")
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 10, "train/loss": 3.0}\n')
    f.write('{"step": 10, "val/flow": 0.5}\n')  # Another metric: fine.
  report = diagnosis.run(workdir)
  flag = [f for f in report.flags if f.name == "metrics_order"]
  assert flag and flag[0].severity == "warning"
  assert "train/loss at step 10 after step" in flag[0].message
  clean = diagnosis.run(_healthy_run(tmp_path / "clean"))
  assert "metrics_order" not in _names(clean)
