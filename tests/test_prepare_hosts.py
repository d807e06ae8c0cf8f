"""Preparing on several hosts: each writes its share of the chunks, host 0
merges, and the records are those of one host.

The logic is tested with hosts as threads (a barrier for `sync`, a shared
list for `gather`); the command line with real processes joined by
jax.distributed through `launch_local`, on folder images and on tar shards,
with a tiny random KL-VAE whose moments are cached.
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from txt2img_jax.data import imagefolder as ifo
from txt2img_jax.data import records
from txt2img_jax.data import records_hosts
from txt2img_jax.data import records_prepare

from test_records import OPTS  # pylint: disable=g-bad-import-order
from test_records import _by_key
from test_records import _featurize
from test_records import bad_folder  # pylint: disable=unused-import
from test_webdataset import shards_and_folder  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = {"encoder": "mean-rgb", "weights_sha256": "0" * 8, "max_len": 4}
CHUNKED = dict(OPTS, chunk_size=2, featurize_batch_size=2, fingerprint=FP)


class _Meeting:
  """`count` threads acting as hosts."""

  def __init__(self, count: int):
    self.count = count
    self.barrier = threading.Barrier(count, timeout=60)
    self.slots = [0] * count

  def hosts(self, index: int) -> records_hosts.Hosts:
    def sync(name):
      del name
      self.barrier.wait()

    def gather(x):
      self.slots[index] = x
      self.barrier.wait()
      out = list(self.slots)
      self.barrier.wait()
      return out

    return records_hosts.Hosts(index, self.count, sync, gather)


def _counting():
  """`_featurize()` that keeps the batch size of every call."""
  inner = _featurize()

  def featurize(images, captions):
    featurize.sizes.append(len(images))
    return inner(images, captions)

  featurize.sizes = []
  return featurize


def _on_hosts(count, out_dirs, featurizers, source=None, **kw):
  """`prepare` on `count` thread-hosts; [(report or exception)] in order."""
  meeting = _Meeting(count)
  results = [None] * count

  def host(i):
    try:
      results[i] = records_prepare.prepare(
          source(),
          out_dirs[i],
          featurize=featurizers[i],
          hosts=meeting.hosts(i),
          **{**CHUNKED, **kw},
      )
    except BaseException as e:  # pylint: disable=broad-except
      results[i] = e
      meeting.barrier.abort()  # The others stop waiting, as on a pod.

  threads = [threading.Thread(target=host, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(120)
  return results


def _shards(out):
  return sorted(f for f in os.listdir(out) if f.endswith(".array_record"))


def _same_report(a, b):
  for key in ("listed", "written", "skipped", "reasons", "total_bytes"):
    assert a[key] == b[key], key


@pytest.fixture(scope="module")
def one_host(bad_folder, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("one") / "out")
  report = records_prepare.prepare(
      ifo.ImageFolderSource(bad_folder), out, featurize=_featurize(), **CHUNKED
  )
  return out, report


@pytest.mark.parametrize("count", [2, 3])
def test_hosts_write_the_records_of_one(bad_folder, one_host, tmp_path, count):
  ref, ref_report = one_host
  out = str(tmp_path / "out")
  calls = [_counting() for _ in range(count)]
  results = _on_hosts(
      count, [out] * count, calls, lambda: ifo.ImageFolderSource(bad_folder)
  )
  for r in results:
    assert isinstance(r, dict), r
    _same_report(r, ref_report)
  assert _by_key(out) == _by_key(ref)
  assert _shards(out) == _shards(ref)
  # Each host featurized its own chunks: all of them took a share.
  shares = [c.sizes for c in calls]
  assert all(shares), shares
  assert sum(sum(s) for s in shares) == sum(ref_report["written"].values())


def test_an_interrupted_multi_host_prepare_resumes(
    bad_folder, one_host, tmp_path
):
  ref, ref_report = one_host
  out = str(tmp_path / "out")
  source = lambda: ifo.ImageFolderSource(bad_folder)
  first = _on_hosts(2, [out] * 2, [_featurize(), _featurize(2)], source)
  assert isinstance(first[1], RuntimeError) and "interrupted" in str(first[1])
  assert isinstance(first[0], BaseException)  # Stopped waiting for host 1.
  assert not os.path.exists(os.path.join(out, records.MANIFEST))
  done = os.listdir(os.path.join(out, records.CHUNKS_DIR))
  assert done, "host 0 should have finished chunks before host 1 failed"
  again = _on_hosts(2, [out] * 2, [_featurize(), _featurize()], source)
  for r in again:
    assert isinstance(r, dict), r
    _same_report(r, ref_report)
    assert 0 < r["processed"] < r["listed"]
  assert _by_key(out) == _by_key(ref)
  # A third time: everyone finds it complete and reuses it.
  third = _on_hosts(2, [out] * 2, [_featurize(1), _featurize(1)], source)
  assert all(isinstance(r, dict) for r in third), third


def test_hosts_without_a_shared_dir_each_prepare_all(
    bad_folder, one_host, tmp_path
):
  ref, ref_report = one_host
  outs = [str(tmp_path / f"disk{i}" / "out") for i in range(2)]
  results = _on_hosts(
      2,
      outs,
      [_featurize(), _featurize()],
      lambda: ifo.ImageFolderSource(bad_folder),
  )
  for r, out in zip(results, outs):
    assert isinstance(r, dict), r
    _same_report(r, ref_report)
    assert _by_key(out) == _by_key(ref)


def test_hosts_must_name_a_valid_index():
  with pytest.raises(ValueError, match="not in"):
    records_hosts.Hosts(2, 2, gather=lambda x: [x])
  with pytest.raises(ValueError, match="gather"):
    records_hosts.Hosts(0, 2)


# --- Real processes ----------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
  pytest.importorskip("torch")
  import test_kl_vae  # pylint: disable=g-import-not-at-top

  path = str(tmp_path_factory.mktemp("vae"))
  test_kl_vae._save_random_vae(path, **test_kl_vae.VARIANTS["sd"])
  return path


def _prepare(data_dir, vae, data_args, num_processes):
  """`prepare` as a user types it: one process, or through launch_local
  (one CPU device per process, as the 1-process run has)."""
  args = [
      "--config=configs/folder.py:tiny",
      f"--config.data.data_dir={data_dir}",
      "--config.autoencoder.kind=kl_vae",
      f"--config.autoencoder.path={vae}",
      "--config.data.image_size=32",
      *data_args,
  ]
  if num_processes == 1:
    cmd = [sys.executable, "-m", "txt2img_jax.prepare", *args]
  else:
    cmd = [
        sys.executable,
        "-m",
        "txt2img_jax.launch_local",
        f"--num_processes={num_processes}",
        "--devices_per_process=1",
        "--module=txt2img_jax.prepare",
        "--",
        *args,
    ]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


def _prepared(data_dir):
  (name,) = os.listdir(os.path.join(data_dir, "prepared"))
  out = os.path.join(data_dir, "prepared", name)
  with open(os.path.join(out, records.REPORT)) as f:
    return out, json.load(f)


def _records_with_moments(out):
  got = {}
  for split in ("train", "val"):
    src = records.PreparedSource(out, split)
    for i in range(len(src)):
      rec = records.decode_record(src[i])
      got[records.read_record(src[i])["key"]] = (
          rec["captions"],
          records.decode_image_uint8(src[i]).tobytes(),
          np.asarray(rec["moments_mean"]).tobytes(),
          np.asarray(rec["moments_logvar"]).tobytes(),
      )
  return got


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_two_processes_prepare_what_one_does(
    shards_and_folder, vae_dir, tmp_path, kind
):
  shards, folder = shards_and_folder
  data_args = (
      [f"--config.data.path={folder}"]
      if kind == "folder"
      else [
          "--config.data.name=webdataset",
          f"--config.data.path={shards}/{{0000..0003}}.tar",
      ]
  )
  # Chunks of 2 examples: both processes get some.
  data_args.append("--config.data.val_count=2")
  one = _prepare(str(tmp_path / "one"), vae_dir, data_args, 1)
  assert one.returncode == 0, one.stderr[-3000:]
  two = _prepare(str(tmp_path / "two"), vae_dir, data_args, 2)
  assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
  assert "[launch] all processes finished" in two.stdout
  out1, report1 = _prepared(str(tmp_path / "one"))
  out2, report2 = _prepared(str(tmp_path / "two"))
  _same_report(report1, report2)
  got1, got2 = _records_with_moments(out1), _records_with_moments(out2)
  assert got1 == got2
  assert len(got1) == sum(report1["written"].values()) >= 6
