"""Several hosts on one machine: 2 processes x 2 CPU devices train exactly as
1 process x 4 devices, share checkpoints with it both ways, resume after a
kill, and only process 0 writes the run's files.

Every run goes through `launch_local` (or main.py for the 1-process runs)
in subprocesses; the runs are shared by the tests through module fixtures.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpoint_trees
from txt2img_jax import launch_local
from txt2img_jax.utils import runfiles
from txt2img_jax.data import pipeline
from txt2img_jax.data import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 4
# base.py's tiny run, 4 steps; a checkpoint, sample grid and evaluation at
# step 2 (the kill below lands in that evaluation) and at the end.
ARGS = [
    "--config=configs/base.py:tiny",
    f"--config.total_steps={TOTAL}",
    "--config.log_every=1",
    "--config.checkpoint_every=2",
    "--config.sample_every=2",
    "--config.eval_every=2",
]


@pytest.fixture(scope="module")
def env(data_dir):
  return dict(
      os.environ,
      TXT2IMG_DATA_DIR=data_dir,
      PYTHONPATH=REPO,
      JAX_PLATFORMS="cpu",
  )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _one_process(env, workdir, *extra):
  """1 process x 4 fake devices, no jax.distributed.

  The 1-process runs share a compilation cache. The 2-process runs do not:
  with one, a resumed 2-process run hung in its first step here (one process
  seemed to load the step from the cache while the other compiled it; the
  same resume without the cache finished).
  """
  run_env = launch_local.process_env(4, env)
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.main",
          *ARGS,
          f"--workdir={workdir}",
          *extra,
      ],
      env=run_env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout + r.stderr


def _launch_cmd(workdir, *extra, num_processes=2):
  return [
      sys.executable,
      "-m",
      "txt2img_jax.launch_local",
      f"--num_processes={num_processes}",
      "--devices_per_process=2",
      "--",
      *ARGS,
      f"--workdir={workdir}",
      *extra,
  ]


def _two_processes(env, workdir, *extra):
  r = subprocess.run(
      _launch_cmd(workdir, *extra),
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
  return r.stdout


def _copy_up_to(src, dst, step):
  """A workdir as it was when checkpoint `step` was the newest."""
  shutil.copytree(src, dst)
  ckpts = os.path.join(dst, "checkpoints")
  for d in os.listdir(ckpts):
    if d.isdigit() and int(d) > step:
      shutil.rmtree(os.path.join(ckpts, d))
  return dst


@pytest.fixture(scope="module")
def one(env, cache_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one") / "run")
  _one_process(dict(env, JAX_COMPILATION_CACHE_DIR=cache_dir), workdir)
  return workdir


@pytest.fixture(scope="module")
def killed_and_resumed(env, tmp_path_factory):
  """A 2-process run killed (SIGKILL, every process) once checkpoint 2 is
  committed, then the same command again."""
  workdir = str(tmp_path_factory.mktemp("two") / "run")
  proc = subprocess.Popen(
      _launch_cmd(workdir),
      env=env,
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
  )
  step2 = os.path.join(workdir, "checkpoints", "2")
  deadline = time.monotonic() + 600
  while not checkpoint_files.is_complete(step2):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  first_log = proc.communicate()[0]
  resumed_log = _two_processes(env, workdir)
  return workdir, first_log, resumed_log


def _losses(workdir):
  rows = [r for r in runfiles.read_metrics(workdir) if "train/loss" in r]
  return {r["step"]: r["train/loss"] for r in rows}


def _assert_same_state(a, b):
  raw_a, step_a = checkpoint_files.load_raw(a)
  raw_b, step_b = checkpoint_files.load_raw(b)
  assert step_a == step_b == TOTAL
  flat_a = checkpoint_trees._flatten(
      {k: raw_a[k] for k in ("params", "ema_params", "opt_state")}
  )
  flat_b = checkpoint_trees._flatten(
      {k: raw_b[k] for k in ("params", "ema_params", "opt_state")}
  )
  assert flat_a.keys() == flat_b.keys()
  for name, x in flat_a.items():
    y = flat_b[name]
    scale = float(np.max(np.abs(x))) + 1e-6
    assert float(np.max(np.abs(x - y))) <= 1e-5 * max(scale, 1.0), name


def test_two_processes_train_like_one(one, killed_and_resumed):
  two, first_log, resumed_log = killed_and_resumed
  # The kill landed mid-run, and the same command resumed from step 2.
  assert (
      "resumed from" in resumed_log and "at step 2" in resumed_log
  ), resumed_log[-3000:]
  a, b = _losses(one), _losses(two)
  assert sorted(a) == sorted(b) == list(range(1, TOTAL + 1))
  for step in a:
    assert abs(a[step] - b[step]) <= 1e-5 * max(1.0, abs(a[step])), (a, b)
  _assert_same_state(one, two)


def test_only_process_zero_writes(killed_and_resumed):
  two, first_log, resumed_log = killed_and_resumed
  pids = {}
  for log in (first_log, resumed_log):
    for p, pid in re.findall(r"\[launch\] p(\d): pid (\d+)", log):
      pids[int(pid)] = int(p)
  events = glob.glob(os.path.join(two, "events.out.tfevents.*"))
  # One TensorBoard file per launch, each written by process 0.
  assert len(events) == 2, events
  for path in events:
    assert pids[int(path.split(".")[-3])] == 0, (path, pids)
  # Every step logged once: process 1 appended nothing.
  steps = [r["step"] for r in runfiles.read_metrics(two) if "train/loss" in r]
  assert steps == list(range(1, TOTAL + 1)), steps
  # (The kill landed in step 2's sampling: the resumed run draws step 4's.)
  assert {"latest.png", "step_0000004.png"} <= set(
      os.listdir(os.path.join(two, "samples"))
  )
  # Both processes logged their progress (with their prefix).
  assert "[p0] " in resumed_log and "[p1] " in resumed_log


def test_checkpoint_of_two_processes_restores_in_one(
    env, cache_dir, one, killed_and_resumed, tmp_path
):
  two, _, _ = killed_and_resumed
  workdir = _copy_up_to(two, str(tmp_path / "run"), 2)
  log = _one_process(dict(env, JAX_COMPILATION_CACHE_DIR=cache_dir), workdir)
  assert "at step 2" in log
  _assert_same_state(one, workdir)


def test_checkpoint_of_one_process_restores_in_two_fsdp(env, one, tmp_path):
  # Restored into another layout too: params and moments split over hosts.
  workdir = _copy_up_to(one, str(tmp_path / "run"), 2)
  log = _two_processes(env, workdir, "--config.mesh.preset=fsdp")
  assert "at step 2" in log
  _assert_same_state(one, workdir)


def test_processes_with_different_configs_stop_at_once(env, tmp_path):
  port = launch_local.free_port()
  cmds = launch_local.commands(ARGS + [f"--workdir={tmp_path}"], 2, port)
  cmds[1].append("--config.seed=1")
  run_env = launch_local.process_env(2, env)
  procs = [
      subprocess.Popen(
          c,
          env=run_env,
          cwd=REPO,
          text=True,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
      )
      for c in cmds
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 1, out[-2000:]
    # gloo's C++ logger may still print its teardown line after ours.
    last = [l for l in out.strip().splitlines() if not l.startswith("[Gloo]")][
        -1
    ]
    assert "processes see different configs" in last, out[-2000:]
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_launcher_stops_the_others_when_one_fails(env, tmp_path):
  # A mesh that does not fit 2 hosts x 2 devices: one line, exit code 1.
  r = subprocess.run(
      _launch_cmd(str(tmp_path), "--config.mesh.data=8"),
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 1, r.stdout[-2000:]
  assert re.search(
      r"\[p\d\] main: error: mesh.data=8 x mesh.model=1 does not "
      r"fit the 4 devices \(2 hosts x 2\)",
      r.stdout,
  ), r.stdout[-2000:]
  assert "[launch] failed (exit code 1)" in r.stdout


# --- The input pipeline's global batch, from example indices. ---------------


class _Indexed:
  """Records that are their own index: a batch says which examples it has."""

  def __init__(self, n):
    self.n = n

  def as_data_source(self, split):
    del split
    return list(range(self.n))

  def decode_transform(self):
    class Decode(grain.transforms.Map):

      def map(self, i):
        return {
            "image": np.full((1, 1, 1), i, np.int32),
            "caption": f"w{i % 3}",
        }

    return Decode()

  def vocabulary(self):
    return ["w0", "w1", "w2"]


@pytest.mark.parametrize("hosts", [2, 4])
def test_global_batch_is_the_same_whatever_the_host_count(hosts):
  data, g, n = _Indexed(40), 8, 40
  tok = tokenizer_lib.build_word_tokenizer(data.vocabulary(), 4)

  def batches(p, count):
    ds = pipeline.train_dataset(
        data,
        tokenizer=tok,
        max_len=4,
        global_batch_size=g,
        seed=0,
        process_index=p,
        process_count=count,
    )
    return [ds[s]["image"].ravel() for s in range(12)]  # 2.4 epochs.

  single = batches(0, 1)
  per_host = [batches(p, hosts) for p in range(hosts)]
  seen = []
  for s in range(12):
    # Host p holds rows [p * g/hosts, (p+1) * g/hosts) of the global batch:
    # the rows the mesh gives its devices.
    glued = np.concatenate([h[s] for h in per_host])
    np.testing.assert_array_equal(glued, single[s])
    assert len(set(glued.tolist())) == g  # No example twice in a batch.
    seen.extend(glued.tolist())
  # Every epoch (n examples = 5 batches) has every example exactly once.
  for e in range(2):
    assert sorted(seen[e * n : (e + 1) * n]) == list(range(n))


# --- launch/*.sh --dry_run prints exactly what the real launch runs. ---------


def _fake_tool(tmp_path, name):
  """A stand-in for gcloud/srun on PATH that prints its arguments quoted."""
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  tool = bindir / name
  tool.write_text("#!/usr/bin/env bash\nprintf '%q ' " + name + ' "$@"; echo\n')
  tool.chmod(0o755)
  return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


def _bash(script, args, env):
  r = subprocess.run(
      ["bash", os.path.join(REPO, "launch", script), *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=60,
  )
  assert r.returncode == 0, r.stderr
  return r.stdout


def test_tpu_pod_dry_run(tmp_path):
  env = dict(
      _fake_tool(tmp_path, "gcloud"),
      REPO_URL="https://x.org/r.git",
      REPO_REF="v1",
  )
  args = [
      "my-tpu",
      "us-central2-b",
      "configs/restart.py",
      "/gcs/b/run1",
      "--config.total_steps=10",
      "--config.name=two words",
  ]
  dry = _bash("tpu_pod.sh", ["--dry_run", *args], env).splitlines()
  gcloud = dry[1]
  # What the dry run prints is what the launch hands to gcloud.
  assert _bash("tpu_pod.sh", args, env).strip() == gcloud.strip()
  assert gcloud.startswith(
      "gcloud compute tpus tpu-vm ssh my-tpu "
      "--zone=us-central2-b --worker=all "
  )
  main = dry[
      dry.index(
          "# main command on every worker (jax.distributed "
          "gives each its process index):"
      )
      + 1
  ]
  assert main == (
      "python -m txt2img_jax.main --distributed "
      "--config=configs/restart.py --workdir=/gcs/b/run1 "
      "--config.dtype=bfloat16 --config.total_steps=10 "
      "--config.name=two\\ words"
  )
  # The script each worker's shell runs: the last argument, unquoted.
  remote = subprocess.run(
      ["bash", "-c", 'eval "set -- $0"; printf %s "${@: -1}"', gcloud],
      capture_output=True,
      text=True,
  ).stdout
  assert remote.startswith("--command=set -e\n")
  assert remote.splitlines()[-1] == main
  pin = re.search(
      r"^jax\[cpu\]==(\S+)$",
      open(os.path.join(REPO, "requirements.txt")).read(),
      re.M,
  ).group(1)
  assert f"'jax[tpu]=={pin}'" in remote
  assert "git checkout -q v1" in remote
  assert "export TXT2IMG_DATA_DIR=" in remote


def test_gpu_slurm_dry_run(tmp_path):
  env = dict(_fake_tool(tmp_path, "srun"), NODES="3")
  env.pop("SLURM_NNODES", None)
  args = ["configs/restart.py", "/shared/run1", "--config.total_steps=10"]
  dry = _bash("gpu_slurm.sh", ["--dry_run", *args], env).splitlines()
  assert _bash("gpu_slurm.sh", args, env).strip() == dry[1].strip()
  main = (
      "python -m txt2img_jax.main --distributed "
      "--config=configs/restart.py --workdir=/shared/run1 "
      "--config.dtype=bfloat16 --config.total_steps=10"
  )
  assert dry[1].strip() == (
      "srun --ntasks-per-node=1 --kill-on-bad-exit=1 " + main
  )
  assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in dry
  tasks = [
      dry[i + 1].strip() for i, l in enumerate(dry) if l.startswith("# task ")
  ]
  assert tasks == [main] * 3


def test_a_workdir_is_a_bucket_url_or_an_absolute_local_path(
    tmp_path, monkeypatch
):
  # Every host names the run the same: a URL is kept as one (no local
  # folder named 'gs:'), a local path is made absolute.
  assert (
      checkpoint_files.workdir_path("gs://bucket/run1/") == "gs://bucket/run1"
  )
  with pytest.raises(ValueError, match=r"--workdir=http://x/r: the http://"):
    checkpoint_files.workdir_path("http://x/r")
  monkeypatch.chdir(tmp_path)
  assert checkpoint_files.workdir_path("run1") == str(tmp_path / "run1")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert checkpoint_files.workdir_path("~/run2") == str(tmp_path / "run2")
