"""A training run whose workdir is a bucket URL (`gs://bk/run`), as typed.

The commands run under `tests/with_bucket.py`, which makes `gs://` live in a
local folder for everything that goes through the path layer and fails
(exit 3, `BYPASS:` lines) when a call site hands a `gs:` path to a local
file call instead. The data dir is in the bucket too (`gs://bk/data`), its
shards staged in a local stage dir of the test's own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from emulated_bucket import EmulatedBucket
from txt2img_jax.train import checkpoint_files
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.utils import runlock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITH_BUCKET = os.path.join(REPO, "tests", "with_bucket.py")
URL = "gs://bk/run"


def _command(root, cwd, env, module, *flags):
  return subprocess.run(
      [sys.executable, WITH_BUCKET, str(root), "-m", module, *flags],
      cwd=str(cwd),
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def _train(root, cwd, env, *flags):
  return _command(
      root,
      cwd,
      env,
      "txt2img_jax.main",
      "--config=configs/base.py:tiny",
      f"--workdir={URL}",
      "--config.data.data_dir=gs://bk/data",
      *flags,
  )


def test_a_run_trains_resumes_samples_and_evaluates_in_a_bucket(tmp_path):
  root, cwd = tmp_path / "bucket", tmp_path / "user"
  cwd.mkdir()
  os.symlink(os.path.join(REPO, "configs"), cwd / "configs")
  env = dict(os.environ)
  env.update(
      PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
      TXT2IMG_STAGE_DIR=str(tmp_path / "stage"),
      JAX_PLATFORMS="cpu",
      # The resume compiles the same step: read it back.
      JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  r = _train(root, cwd, env, "--config.total_steps=3")
  assert r.returncode == 0, r.stderr[-3000:]  # 3: a call went around paths.
  r = _train(root, cwd, env, "--config.total_steps=6")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "BYPASS" not in r.stderr
  assert f"resumed from {URL}/checkpoints at step 3" in r.stderr

  run = root / "bk" / "run"
  files = set(os.listdir(run))
  assert {"config.json", "vocab.json", "latent_stats.json"} <= files
  assert any(f.startswith("events.out.tfevents") for f in files)
  assert runlock.LOCK_FILE not in files  # Released at the end.
  steps = [r["step"] for r in runfiles.read_metrics(str(run))]
  train_steps = [
      r["step"] for r in runfiles.read_metrics(str(run)) if "train/loss" in r
  ]
  assert max(steps) == 6 and train_steps == [2, 3, 4, 6]
  assert checkpoint_files.is_complete(str(run / "checkpoints" / "6"))
  assert checkpoint_files.resolve_checkpoint(str(run))[1] == 6
  assert {"latest.png", "step_0000006.png"} <= set(os.listdir(run / "samples"))
  # The shapes data was made in the stage dir and uploaded to the data dir.
  uploaded = [f for _, _, fs in os.walk(root / "bk" / "data") for f in fs]
  assert "dataset_info.json" in uploaded, uploaded

  r = _command(
      root,
      cwd,
      env,
      "txt2img_jax.sample",
      f"--workdir={URL}",
      "--prompt=a red square",
      "--out=gs://bk/out/red.png",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.getsize(root / "bk" / "out" / "red.png") > 0
  r = _command(
      root,
      cwd,
      env,
      "txt2img_jax.evaluate",
      f"--workdir={URL}",
      "--num=8",
      "--json=gs://bk/out/eval.json",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  with open(root / "bk" / "out" / "eval.json") as f:
    assert json.load(f)["step"] == 6
  assert not os.path.exists(cwd / "gs:")  # No local folder named for a URL.
  assert os.listdir(cwd) == ["configs"]


def test_two_processes_train_in_a_bucket(tmp_path):
  """A pod's path, rehearsed: 2 processes of `launch_local` (each its own
  jax process, host 0 writing the run files, both writing their checkpoint
  shards) on a gs:// workdir and data dir. The emulation reaches the
  launched processes through `tests/bucket_site/sitecustomize.py`."""
  root, cwd = tmp_path / "bucket", tmp_path / "user"
  cwd.mkdir()
  os.symlink(os.path.join(REPO, "configs"), cwd / "configs")
  env = dict(os.environ)
  env.update(
      PYTHONPATH=os.pathsep.join(
          [os.path.join(REPO, "tests", "bucket_site"), REPO]
      ),
      TXT2IMG_TEST_BUCKET=str(root),
      TXT2IMG_STAGE_DIR=str(tmp_path / "stage"),
      JAX_PLATFORMS="cpu",
  )
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.launch_local",
          "--num_processes=2",
          "--devices_per_process=1",
          "--",
          "--config=configs/base.py:tiny",
          f"--workdir={URL}",
          "--config.data.data_dir=gs://bk/data",
      ],
      cwd=str(cwd),
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-3000:]
  assert "BYPASS" not in out, [l for l in out.splitlines() if "BYPASS" in l]
  run = root / "bk" / "run"
  assert checkpoint_files.resolve_checkpoint(str(run))[1] == 6
  assert max(r["step"] for r in runfiles.read_metrics(str(run))) == 6
  assert os.listdir(cwd) == ["configs"]


def test_a_workdir_of_another_scheme_is_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.main",
          "--config=configs/base.py:tiny",
          "--workdir=http://example.com/run",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 1
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(
      "main: error: --workdir=http://example.com/run: the http:// scheme is "
      "not a file system"
  ), last
  assert "Traceback" not in r.stderr


# --- The run lock on a bucket: a lease in the object ---------------------------


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  monkeypatch.setattr(runlock, "CONFIRM_S", 0.05)
  with EmulatedBucket(tmp_path) as b:
    yield b
  assert b.bypasses == []


def _lease(**fields):
  return json.dumps(
      dict(
          {
              "pid": 1,
              "host": "tpu-vm-7",
              "started": "then",
              "what": "training",
              "token": "theirs",
              "heartbeat": time.time(),
          },
          **fields,
      )
  )


def test_a_live_lease_refuses_a_second_writer_and_is_released(
    bucket, monkeypatch
):
  monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
  lock = runlock.RunLock(URL).acquire()
  path = paths.join(URL, runlock.LOCK_FILE)
  held = json.loads(paths.read_text(path))
  assert held["pid"] == os.getpid() and held["token"]
  with pytest.raises(runlock.RunLockedError) as e:
    runlock.RunLock(URL).acquire()
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(
      f"{URL} is in use by PID {os.getpid()} on host {socket.gethostname()}"
  )
  time.sleep(0.5)  # The heartbeat rewrites the lease with its new time.
  assert json.loads(paths.read_text(path))["heartbeat"] > held["heartbeat"]
  lock.release()
  assert not paths.exists(path)
  with runlock.RunLock(URL):  # Free again.
    pass
  assert not paths.exists(path)


def test_a_stale_lease_is_taken_over_and_a_fresh_one_holds(bucket, caplog):
  path = paths.join(URL, runlock.LOCK_FILE)
  paths.write_text(path, _lease())
  with pytest.raises(runlock.RunLockedError, match="host tpu-vm-7.*lease"):
    runlock.RunLock(URL).acquire()
  paths.write_text(path, _lease(heartbeat=time.time() - runlock.LEASE_S - 5))
  with caplog.at_level("WARNING"):
    with runlock.RunLock(URL):
      assert json.loads(paths.read_text(path))["pid"] == os.getpid()
  assert "taking over" in caplog.text and "tpu-vm-7" in caplog.text
  # Left by an earlier process of this host with this PID (a restarted
  # container's): not this process's, so not held.
  paths.write_text(path, _lease(pid=os.getpid(), host=socket.gethostname()))
  runlock.RunLock(URL).acquire().release()


def test_a_lease_replaced_while_confirming_stops_the_later_reader(
    bucket, monkeypatch
):
  path = paths.join(URL, runlock.LOCK_FILE)
  # Another starter's upload lands while this one waits to read back.
  monkeypatch.setattr(
      runlock.time, "sleep", lambda s: paths.write_text(path, _lease())
  )
  with pytest.raises(runlock.RunLockedError, match="tpu-vm-7"):
    runlock.RunLock(URL).acquire()
  assert json.loads(paths.read_text(path))["token"] == "theirs"


def test_a_bucket_step_dir_is_complete_once_orbax_wrote_its_commit_file(
    bucket,
):
  # On gs:// orbax saves into the step dir itself: its metadata files are
  # there from the start, and commit_success.txt, written last, commits it.
  step = f"{URL}/checkpoints/5"
  for name in ("_CHECKPOINT_METADATA", "default/_METADATA"):
    paths.write_text(f"{step}/{name}", "{}")
  assert checkpoint_files.step_dirs(f"{URL}/checkpoints") == ([], [5])
  paths.write_text(f"{step}/commit_success.txt", "Checkpoint commit was ok")
  assert checkpoint_files.step_dirs(f"{URL}/checkpoints") == ([5], [])
  assert checkpoint_files.resolve_checkpoint(URL) == (f"{URL}/checkpoints", 5)
