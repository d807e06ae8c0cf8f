"""Faults made to happen on tiny runs, and what the user gets: SIGTERM mid-run,
broken checkpoints, a torn metrics line, skipped and runaway steps, corrupt
prepared data. docs/reliability.md lists them."""

import os
import random
import shutil
import signal
import subprocess
import tempfile
import sys
import time

import jax
import numpy as np
import pytest

from test_train import tiny_config
from txt2img_jax.train import validate
from txt2img_jax.train import assets
from txt2img_jax.train import checkpointing
from txt2img_jax.utils import reporting
from txt2img_jax.utils import runfiles
from txt2img_jax.train import loop as train
from txt2img_jax.data import tfds_shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The subprocesses of a test compile the same step: they share jax's
# persistent compilation cache.
ENV = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="jax_cache_"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
)


def _main(workdir, *flags):
  return [
      sys.executable,
      "-m",
      "txt2img_jax.main",
      f"--workdir={workdir}",
      *flags,
  ]


def _train_rows(workdir):
  """Metrics rows without the wall-clock ones (never equal twice)."""
  return [
      {k: v for k, v in r.items() if "steps_per_sec" not in k}
      for r in runfiles.read_metrics(workdir)
  ]


# --- metrics.jsonl ------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "train/loss": 1.0}\n{"step": 4, "train/lo')
  with caplog.at_level("WARNING"):
    assert runfiles.read_metrics(str(tmp_path)) == [
        {"step": 2, "train/loss": 1.0}
    ]
  assert "cut off in mid-write" in caplog.text
  # Appending first cuts the torn line off, or the damage moves inside.
  runfiles.append_metrics(str(tmp_path), {"step": 4, "train/loss": 0.5})
  assert [r["step"] for r in runfiles.read_metrics(str(tmp_path))] == [2, 4]


def test_broken_line_inside_metrics_is_a_clear_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 2}\nGARBAGE\n{"step": 4}\n')
  with pytest.raises(ValueError, match="line 2 is not a metrics row"):
    runfiles.read_metrics(str(tmp_path))


# --- checkpoints ------------------------------------------------------------


def _save_two(workdir):
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=5)
  for step in (1, 2):
    ckpt.save(
        step,
        {
            "w": np.full((32, 32), float(step), np.float32),
            "step": np.int32(step),
        },
    )
  ckpt.close()
  return os.path.join(workdir, "checkpoints")


def _truncate_arrays(step_dir):
  for root, _, files in os.walk(step_dir):
    if os.path.basename(root) == "d":
      for name in files:
        path = os.path.join(root, name)
        os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize(
    "fault", ["truncated_arrays", "no_metadata", "empty_newer_dir"]
)
def test_broken_newest_checkpoint_falls_back(fault, tmp_path, caplog):
  workdir = str(tmp_path)
  directory = _save_two(workdir)
  newest = os.path.join(directory, "2")
  if fault == "truncated_arrays":
    _truncate_arrays(newest)
  elif fault == "no_metadata":
    os.remove(os.path.join(newest, "default", "_METADATA"))
  else:
    shutil.rmtree(newest)
    os.makedirs(newest)
  good = 1
  # sample / evaluate / init_from: never the broken step.
  raw, step = checkpointing.load_raw(workdir)
  assert step == good and float(raw["w"][0, 0]) == good
  if fault != "truncated_arrays":  # Caught without reading an array.
    assert checkpointing.resolve_checkpoint(workdir) == (directory, good)
  # Resume: falls back with a warning, sets the broken step aside, and can
  # save that step again.
  abstract = {
      "w": jax.ShapeDtypeStruct((32, 32), np.float32),
      "step": jax.ShapeDtypeStruct((), np.int32),
  }
  with caplog.at_level("WARNING"):
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=5)
    state = ckpt.restore(abstract)
  assert int(state["step"]) == good
  assert "checkpoint step 2" in caplog.text
  assert os.listdir(os.path.join(workdir, checkpointing.BROKEN_DIR)) == ["2"]
  ckpt.save(2, {"w": np.zeros((32, 32), np.float32), "step": np.int32(2)})
  ckpt.close()
  assert checkpointing.load_raw(workdir)[1] == 2


def test_a_step_dir_alone_must_be_complete(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "5")
  with pytest.raises(FileNotFoundError, match="empty or were cut off"):
    checkpointing.resolve_checkpoint(str(tmp_path))


# --- non-finite steps, runaway updates ----------------------------------------


def test_ema_decay_must_lie_in_0_1():
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match="ema_decay"):
      validate.validate_config(tiny_config(ema_decay=bad))


def test_skipped_steps_leave_the_ema_and_k_in_a_row_stop_the_run(
    data_dir, tmp_path, monkeypatch
):
  # Every batch from step 3 on has a NaN image: steps 4.. are skipped.
  original = assets.train_batches

  def poisoned(config, data, text, start_step):
    for i, b in enumerate(original(config, data, text, start_step), start_step):
      yield dict(b, image=np.full_like(b["image"], np.nan)) if i >= 3 else b

  monkeypatch.setattr(assets, "train_batches", poisoned)
  workdir = str(tmp_path / "nan")
  c = tiny_config(
      total_steps=12,
      checkpoint_every=3,
      keep_checkpoints=5,
      max_skipped_steps=4,
      sample_every=0,
      eval_every=0,
  )
  with pytest.raises(
      reporting.RunawayError,
      match=r"4 steps in a row .*Last good checkpoint: step 6",
  ):
    train.train_and_evaluate(c, workdir)
  directory = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(directory)) == ["3", "6"]
  before, _ = checkpointing.load_raw(os.path.join(directory, "3"))
  after, _ = checkpointing.load_raw(os.path.join(directory, "6"))
  assert int(after["nonfinite"]) == 3
  for key in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, before[key], after[key])
  rows = [r for r in runfiles.read_metrics(workdir) if "train/skipped" in r]
  assert rows[-1]["train/skipped"] == 1.0


def test_absurd_lr_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path
):
  workdir = str(tmp_path / "lr")
  r = subprocess.run(
      _main(
          workdir,
          "--config=configs/base.py:tiny",
          "--config.optim.groups.flow.lr=1e10",
          "--config.checkpoint_every=1",
          "--config.keep_checkpoints=5",
      ),
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert "max_update_ratio" in last and "not applied" in last, last
  assert "optim.groups.flow.lr" in last, last
  assert "Traceback" not in r.stderr
  raw, step = checkpointing.load_raw(workdir)
  assert f"Last good checkpoint: step {step}" in last
  norms = [float(np.linalg.norm(x)) for x in jax.tree.leaves(raw["params"])]
  assert np.all(np.isfinite(norms)) and max(norms) < 1e3
  assert int(raw["nonfinite"]) == 0


# --- SIGTERM ------------------------------------------------------------------


def _wait_for_step(proc, workdir, step, timeout=600):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    rows = runfiles.read_metrics(workdir) if os.path.isdir(workdir) else []
    if any(r["step"] >= step for r in rows):
      return
    time.sleep(0.2)


def test_sigterm_saves_and_the_rerun_ends_like_an_uninterrupted_run(
    data_dir, tmp_path
):
  flags = (
      "--config=configs/restart.py:tiny",
      "--config.total_steps=40",
      "--config.checkpoint_every=1000",
      "--config.sample_every=0",
      "--config.eval_every=0",
  )
  seed = int(os.environ.get("RELIABILITY_SEED", time.time_ns() % 10_000))
  at = random.Random(seed).randrange(3, 30)
  where = f"(SIGTERM after step {at}; RELIABILITY_SEED={seed} repeats it)"

  # The uninterrupted run to compare with, side by side with the rest.
  whole = str(tmp_path / "whole")
  whole_log = open(tmp_path / "whole.log", "w")  # Never an undrained pipe.
  whole_proc = subprocess.Popen(
      _main(whole, *flags),
      cwd=REPO,
      env=ENV,
      stdout=whole_log,
      stderr=subprocess.STDOUT,
  )
  stopped = str(tmp_path / "stopped")
  # The log goes to a file: an undrained pipe fills up and blocks the run.
  log = tmp_path / "stopped.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
        _main(stopped, *flags),
        cwd=REPO,
        env=ENV,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    _wait_for_step(proc, stopped, at)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
  err = log.read_text()
  assert proc.returncode == 0, where + err[-3000:]
  assert "stopped by SIGTERM" in err, where
  _, saved = checkpointing.resolve_checkpoint(stopped)
  assert at <= saved < 40, where
  # What a kill in mid-write leaves; the rerun drops it with a warning.
  with open(runfiles.metrics_path(stopped), "a") as f:
    f.write('{"step": 41, "train/lo')

  r = subprocess.run(
      _main(stopped, *flags),
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, where + r.stderr[-3000:]
  assert f"at step {saved}" in r.stderr and "cut off in mid-write" in r.stderr

  whole_proc.wait(timeout=600)
  whole_log.close()
  assert whole_proc.returncode == 0, (tmp_path / "whole.log").read_text()[
      -3000:
  ]
  a, step_a = checkpointing.load_raw(whole)
  b, step_b = checkpointing.load_raw(stopped)
  assert step_a == step_b == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert _train_rows(stopped) == _train_rows(whole), where

  # kill -9 (no handler runs): the rerun resumes from the last checkpoint
  # and ends bit-equal to the uninterrupted run.
  killed = str(tmp_path / "killed")
  kill_flags = flags + ("--config.checkpoint_every=10",)
  proc = subprocess.Popen(
      _main(killed, *kill_flags),
      cwd=REPO,
      env=ENV,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  _wait_for_step(proc, killed, 25)
  proc.kill()
  proc.wait(timeout=60)
  r = subprocess.run(
      _main(killed, *kill_flags),
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from" in r.stderr
  c, step_c = checkpointing.load_raw(killed)
  assert step_c == 40
  jax.tree.map(np.testing.assert_array_equal, a, c)
  assert _train_rows(killed) == _train_rows(whole)


# --- prepared data ------------------------------------------------------------


def test_cut_train_records_are_a_clear_data_error(tmp_path):
  sizes = dict(num_train=16, num_test=8, num_heldout=8)
  builder = tfds_shapes.prepare(str(tmp_path), **sizes)
  train_file = [
      f for f in os.listdir(builder.data_dir) if "-train.array_record" in f
  ][0]
  path = os.path.join(builder.data_dir, train_file)
  os.truncate(path, os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match="corrupt.*Delete that directory"):
    tfds_shapes.prepare(str(tmp_path), **sizes)
