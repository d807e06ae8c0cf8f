"""Faults made to happen on tiny runs, and what the user gets: SIGTERM mid-run,
broken checkpoints, a torn metrics line, skipped and runaway steps, corrupt
prepared data. docs/reliability.md lists them."""

import json
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
from txt2img_jax.train import run_data
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpointing
from txt2img_jax.utils import runaway
from txt2img_jax.utils import runfiles
from txt2img_jax.utils import runlock
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


def _completed(argv, timeout=600, env=None):
  """A command run to its end here, its output captured."""
  return subprocess.run(
      argv,
      cwd=REPO,
      env=env or ENV,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


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
  raw, step = checkpoint_files.load_raw(workdir)
  assert step == good and float(raw["w"][0, 0]) == good
  if fault != "truncated_arrays":  # Caught without reading an array.
    assert checkpoint_files.resolve_checkpoint(workdir) == (directory, good)
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
  assert checkpoint_files.load_raw(workdir)[1] == 2


def test_a_step_dir_alone_must_be_complete(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "5")
  with pytest.raises(FileNotFoundError, match="empty or were cut off"):
    checkpoint_files.resolve_checkpoint(str(tmp_path))


# --- non-finite steps, runaway updates ----------------------------------------


def test_ema_decay_must_lie_in_0_1():
  for bad in (1.5, -0.1, float("nan")):
    with pytest.raises(ValueError, match="ema_decay"):
      validate.validate_config(tiny_config(ema_decay=bad))


def test_skipped_steps_leave_the_ema_and_k_in_a_row_stop_the_run(
    data_dir, tmp_path, monkeypatch
):
  # Every batch from step 3 on has a NaN image: steps 4.. are skipped.
  original = run_data.train_batches

  def poisoned(config, data, text, start_step, **kwargs):
    batches = original(config, data, text, start_step, **kwargs)
    for i, b in enumerate(batches, start_step):
      yield dict(b, image=np.full_like(b["image"], np.nan)) if i >= 3 else b

  monkeypatch.setattr(run_data, "train_batches", poisoned)
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
      runaway.RunawayError,
      match=r"4 steps in a row .*Last good checkpoint: step 6",
  ):
    train.train_and_evaluate(c, workdir)
  directory = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(directory)) == ["3", "6"]
  before, _ = checkpoint_files.load_raw(os.path.join(directory, "3"))
  after, _ = checkpoint_files.load_raw(os.path.join(directory, "6"))
  assert int(after["nonfinite"]) == 3
  for key in ("params", "ema_params", "opt_state"):
    jax.tree.map(np.testing.assert_array_equal, before[key], after[key])
  rows = [r for r in runfiles.read_metrics(workdir) if "train/skipped" in r]
  assert rows[-1]["train/skipped"] == 1.0


def test_absurd_lr_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path
):
  workdir = str(tmp_path / "lr")
  r = _completed(
      _main(
          workdir,
          "--config=configs/base.py:tiny",
          "--config.optim.groups.flow.lr=1e10",
          "--config.checkpoint_every=1",
          "--config.keep_checkpoints=5",
      ),
  )
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert "max_update_ratio" in last and "not applied" in last, last
  assert "optim.groups.flow.lr" in last, last
  assert "Traceback" not in r.stderr
  raw, step = checkpoint_files.load_raw(workdir)
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
  # A second process on the same run (another model, typed 8 s later in the
  # issue) stops before writing; the first ends as if alone (checked below:
  # its final checkpoint equals the stopped-and-resumed run's).
  lock = os.path.join(whole, runlock.LOCK_FILE)
  deadline = time.time() + 300
  while time.time() < deadline and not (
      os.path.exists(lock) and os.path.getsize(lock)
  ):
    time.sleep(0.1)
  second = subprocess.Popen(
      _main(whole, *flags, "--config.flow.width=64"),
      cwd=REPO,
      env=ENV,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
  )
  _, second_err = second.communicate(timeout=600)
  assert second.returncode == 1, second_err[-3000:]
  last = second_err.strip().splitlines()[-1]
  assert f"is in use by PID {whole_proc.pid} on host" in last, last
  assert "Traceback" not in second_err

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
  _, saved = checkpoint_files.resolve_checkpoint(stopped)
  assert at <= saved < 40, where
  # What a kill in mid-write leaves; the rerun drops it with a warning.
  with open(runfiles.metrics_path(stopped), "a") as f:
    f.write('{"step": 41, "train/lo')

  r = _completed(
      _main(stopped, *flags),
  )
  assert r.returncode == 0, where + r.stderr[-3000:]
  assert f"at step {saved}" in r.stderr and "cut off in mid-write" in r.stderr

  whole_proc.wait(timeout=600)
  whole_log.close()
  assert whole_proc.returncode == 0, (tmp_path / "whole.log").read_text()[
      -3000:
  ]
  # Nothing of the second process's: no events file of its PID, its config
  # never written.
  assert not [f for f in os.listdir(whole) if f".{second.pid}." in f]
  assert (
      json.load(open(os.path.join(whole, "config.json")))["flow"]["width"] != 64
  )
  a, step_a = checkpoint_files.load_raw(whole)
  b, step_b = checkpoint_files.load_raw(stopped)
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
  r = _completed(
      _main(killed, *kill_flags),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from" in r.stderr
  assert "taking over the lock" in r.stderr  # kill -9 released nothing.
  c, step_c = checkpoint_files.load_raw(killed)
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


# --- One writer per run -------------------------------------------------------


def _hold_lock(workdir):
  """Another process holding the run's lock until killed."""
  code = (
      "import sys, time\n"
      "from txt2img_jax.utils import runlock\n"
      "runlock.RunLock(sys.argv[1]).acquire()\n"
      "print('held', flush=True)\n"
      "time.sleep(600)\n"
  )
  proc = subprocess.Popen(
      [sys.executable, "-c", code, workdir],
      cwd=REPO,
      env=ENV,
      stdout=subprocess.PIPE,
      text=True,
  )
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_live_holder_stops_a_second_writer_and_a_dead_one_is_taken_over(
    tmp_path, caplog
):
  workdir = str(tmp_path)
  proc = _hold_lock(workdir)
  try:
    with pytest.raises(runlock.RunLockedError, match=f"PID {proc.pid} on host"):
      runlock.RunLock(workdir).acquire()
  finally:
    proc.kill()  # As kill -9: nothing released, the file still names it.
    proc.wait()
  with caplog.at_level("WARNING"):
    with runlock.RunLock(workdir):
      assert f'"pid": {os.getpid()}' in open(tmp_path / ".run.lock").read()
  assert f"PID {proc.pid}" in caplog.text and "taking over" in caplog.text
  assert open(tmp_path / ".run.lock").read() == ""  # Released: empty.


def test_another_hosts_lock_holds_for_its_lease(tmp_path):
  # Where flock is a no-op (some network mounts) the file's content and
  # mtime (the holder's heartbeat) say whether the run is held.
  path = tmp_path / ".run.lock"
  path.write_text('{"pid": 1, "host": "tpu-vm-7", "started": "then"}')
  with pytest.raises(runlock.RunLockedError, match="host tpu-vm-7.*lease"):
    runlock.RunLock(str(tmp_path)).acquire()
  old = time.time() - runlock.LEASE_S - 5
  os.utime(path, (old, old))
  runlock.RunLock(str(tmp_path)).acquire().release()


# --- Checks before the first step, and a failing evaluation -------------------


def test_a_bad_sample_setting_fails_before_anything_is_written(tmp_path):
  workdir = tmp_path / "w"
  r = _completed(
      _main(
          str(workdir),
          "--config=configs/base.py:tiny",
          "--config.sample.num_steps=0",
      ),
      timeout=300,
  )
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      "main: error: sample.num_steps=0 must be an integer >= 1"
  )
  assert "Traceback" not in r.stderr and not workdir.exists()


def test_a_failing_final_evaluation_keeps_the_final_checkpoint(
    data_dir, tmp_path, monkeypatch
):
  from txt2img_jax.evaluation import registry

  class Broken:

    def sample_grid(self, params, step):
      raise RuntimeError("the grid's writer broke")

    def evaluate(self, params, step):
      return {}

  monkeypatch.setattr(registry, "make_evaluator", lambda *a, **k: Broken())
  config = tiny_config(total_steps=5)
  with config.unlocked():
    config.checkpoint_every = 2
    config.sample_every = 0  # Only at the end: after the last step's save.
  workdir = str(tmp_path / "w")
  with pytest.raises(checkpointing.EvaluationError) as e:
    train.train_and_evaluate(config, workdir)
  assert "at step 5 failed (RuntimeError: the grid's writer broke)" in str(
      e.value
  )
  assert "Last good checkpoint: step 5" in str(e.value)
  assert checkpoint_files.resolve_checkpoint(workdir) == (
      os.path.join(workdir, "checkpoints"),
      5,
  )
  assert not [
      d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d
  ]


# --- A full disk ----------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
  probe = (
      subprocess.run(
          [
              "unshare",
              "--user",
              "--map-root-user",
              "--mount",
              "sh",
              "-c",
              "d=$(mktemp -d) && mount -t tmpfs -o size=1M tmpfs $d",
          ],
          capture_output=True,
      )
      if shutil.which("unshare")
      else None
  )
  return probe is not None and probe.returncode == 0


def test_a_full_disk_at_a_save_is_one_line_and_the_run_resumes(
    data_dir, tmp_path
):
  if not _can_mount_tmpfs():
    pytest.skip("cannot mount a small tmpfs here (unshare -r -m)")
  # An 8 MB file system holds one checkpoint of the tiny model (4.3 MB) and
  # not two: the save of step 4 finds the disk full.
  mnt, kept = tmp_path / "mnt", tmp_path / "kept"
  mnt.mkdir()
  flags = (
      "--config=configs/base.py:tiny",
      "--config.total_steps=8",
      "--config.checkpoint_every=2",
      "--config.keep_checkpoints=5",
      "--config.sample_every=0",
      "--config.eval_every=0",
  )
  train_cmd = " ".join(_main(f"{mnt}/run", *flags))
  script = (
      f"mount -t tmpfs -o size=8M tmpfs {mnt} && {train_cmd}; rc=$?; "
      f"cp -r {mnt}/run {kept}; exit $rc"
  )
  # A compilation cache of its own: a program read back from a shared one
  # is logged at level E by XLA's loader on some CPUs (tuning flags taken
  # for missing features), which would hide what this test counts.
  own_cache = dict(ENV, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
  r = _completed(
      ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
      env=own_cache,
  )
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert (
      last.startswith("main: error: no space left on device")
      and "while saving checkpoint 4 to" in last
  ), last
  assert "the previous checkpoint, step 2, is intact" in last
  assert "Traceback" not in r.stderr
  assert r.stderr.count("\nE") == 0  # No error records from orbax's threads.
  assert sorted(os.listdir(kept / "checkpoints")) == ["2"]
  # Space again: the same command resumes from step 2 and finishes.
  r = _completed(
      _main(str(kept), *flags),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "at step 2" in r.stderr
  assert checkpoint_files.resolve_checkpoint(str(kept))[1] == 8


def test_a_write_error_in_orbaxs_words_is_named():
  # What tensorstore raises from a save thread when the disk fills.
  e = ValueError(
      'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/4.orbax-'
      'checkpoint-tmp/x": Failed to write 86323 bytes to file 17: No space '
      "left on device [os_error_code='28']"
  )
  assert checkpointing._write_failure(e) == "no space left on device"
  assert checkpointing._write_failure(ValueError("a shape mismatch")) is None


# --- A resume that changes the run; a run's files that do not fit ---------------


def test_a_resume_that_changes_the_run_stops_unless_allowed(data_dir, tmp_path):
  workdir = str(tmp_path / "w")
  base = (
      "--config=configs/base.py:tiny",
      "--config.sample_every=0",
      "--config.eval_every=0",
      "--config.checkpoint_every=2",
  )

  def main(*flags):
    return _completed(
        _main(workdir, *base, *flags),
    )

  assert main("--config.total_steps=4").returncode == 0
  config_before = open(os.path.join(workdir, "config.json")).read()
  r = main(
      "--config.total_steps=8",
      "--config.batch_size=4",
      "--config.flow.width=64",
  )
  assert r.returncode == 1
  assert r.stderr.strip().splitlines()[-1] == (
      "main: error: this resume changes what the run is (batch_size 8 -> 4, "
      "flow.width 32 -> 64): resume with the run's own config (its "
      "config.json), start a new --workdir, or say so with "
      "--config.allow_changed=batch_size,flow.width"
  )
  assert open(os.path.join(workdir, "config.json")).read() == config_before
  assert checkpoint_files.resolve_checkpoint(workdir)[1] == 4

  r = main(
      "--config.total_steps=8",
      "--config.batch_size=4",
      "--config.allow_changed=batch_size",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "the input goes on at example 32" in r.stderr
  history = [
      json.loads(l) for l in open(os.path.join(workdir, "config_history.jsonl"))
  ]
  assert len(history) == 1 and history[0]["step"] == 4
  assert history[0]["changed"]["batch_size"] == [8, 4]
  assert history[0]["previous"]["batch_size"] == 8
  assert (
      json.load(open(os.path.join(workdir, "config.json")))["batch_size"] == 4
  )
  assert checkpoint_files.resolve_checkpoint(workdir)[1] == 8

  # A changed total_steps alone stays allowed, in one info line.
  r = main("--config.total_steps=10", "--config.batch_size=4")
  assert (
      r.returncode == 0
      and "resuming with changes: total_steps 8 -> 10" in r.stderr
  )

  # sample on the run: its vocab.json edited, or its config naming a hub
  # model that is not in the cache, is one line.
  def sample():
    return _completed(
        [
            sys.executable,
            "-m",
            "txt2img_jax.sample",
            f"--workdir={workdir}",
            "--prompt=a red circle",
            f"--out={tmp_path}/s.png",
        ],
        timeout=300,
    )

  vocab = os.path.join(workdir, "vocab.json")
  words = json.load(open(vocab))
  json.dump(words + ["zebra"], open(vocab, "w"))
  r = sample()
  assert r.returncode == 1 and "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert "holds another model than the run's config.json and vocab.json" in last
  assert "text_encoder/token_embed/embedding" in last
  json.dump(words, open(vocab, "w"))
  assert sample().returncode == 0

  cfg = json.load(open(os.path.join(workdir, "config.json")))
  cfg["text_encoder"]["name"] = "txt2img-tests/not-cached"
  json.dump(cfg, open(os.path.join(workdir, "config.json"), "w"))
  r = sample()
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert (
      "nor in the Hugging Face cache" in r.stderr.strip().splitlines()[-1]
      and "--allow_download" in r.stderr.strip().splitlines()[-1]
  )
