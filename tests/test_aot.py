"""Ahead-of-time compilation (train/aot*.py, `python -m txt2img_jax.aot`).

The parsing and search helpers and the compile path on this host's CPU
device run everywhere. The command itself needs libtpu (the `tpu` extra in
a venv of its own, as .ci/run sets up): those tests skip without it, and
fail instead when TXT2IMG_REQUIRE_TPU=1 (CI's TPU venv).
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from tests import test_train
from txt2img_jax.train import aot, aot_lower, aot_max_batch, aot_tpu, run_data
from txt2img_jax.train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have_libtpu() -> bool:
  try:
    import libtpu  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    return False
  return True


needs_libtpu = pytest.mark.skipif(
    not _have_libtpu() and os.environ.get("TXT2IMG_REQUIRE_TPU") != "1",
    reason="libtpu is not installed (the tpu extra, in its own venv)",
)


def test_collectives_are_counted_by_what_they_produce():
  hlo = "\n".join(
      [
          "  %ag = bf16[8,1024]{1,0} all-gather(%p), channel_id=1",
          "  %s = (bf16[2,4], bf16[8,4]) all-gather-start(%q), channel_id=2",
          "  %d = bf16[8,4]{1,0} all-gather-done(%s)",
          "  %ar = (f32[], f32[16]{0}) all-reduce(%a, %b), to_apply=%add",
          "  %rs = f32[128]{0} reduce-scatter(%g), dimensions={0}",
          "  %x = f32[4]{0} add(%y, %z)",
      ]
  )
  c = aot_tpu.collectives(hlo)
  assert c["all-gather"] == {"count": 2, "bytes": 8 * 1024 * 2 + 8 * 4 * 2}
  assert c["all-reduce"] == {"count": 1, "bytes": 4 + 16 * 4}
  assert c["reduce-scatter"] == {"count": 1, "bytes": 128 * 4}
  assert c["all-to-all"]["count"] == 0


def test_out_of_memory_is_recognised_and_other_errors_are_not():
  oom = RuntimeError(
      "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile "
      "permanent error. Ran out of memory in memory space hbm. Used 17.58G "
      "of 15.75G hbm. Exceeded hbm capacity by 1.83G.\n\nmore"
  )
  assert "Exceeded hbm capacity by 1.83G" in aot_tpu.out_of_memory(oom)
  assert aot_tpu.out_of_memory(RuntimeError("INVALID_ARGUMENT: bad")) is None


def test_cost_model_seconds_reads_uncosted_ops_out_of_the_total():
  # libtpu adds -1 s per op it cannot cost.
  assert aot_tpu.cost_model_seconds(0.25, 0.2) == (0.25, 0)
  seconds, uncosted = aot_tpu.cost_model_seconds(0.0019 - 11, 0.0008)
  assert uncosted == 11 and seconds == pytest.approx(0.0019)
  # A costed part over a second: the roofline says how many whole seconds.
  seconds, uncosted = aot_tpu.cost_model_seconds(2.3 - 3, 2.1)
  assert uncosted == 3 and seconds == pytest.approx(2.3)


@pytest.mark.parametrize("start", [1, 16, 256])
@pytest.mark.parametrize("boundary", [0, 1, 5, 12, 64, 100])
def test_largest_true_finds_the_boundary(boundary, start):
  tried = []

  def fits(n):
    tried.append(n)
    return n <= boundary

  good, bad = aot_max_batch.largest_true(fits, limit=4096, start=start)
  assert good <= boundary < bad
  assert bad - good <= max(1, good // 8)
  assert len(tried) <= 12


def test_largest_true_stops_at_the_limit():
  assert aot_max_batch.largest_true(lambda n: True, limit=64) == (64, None)


def test_batch_shapes_are_what_the_pipeline_feeds(data_dir):
  c = test_train.tiny_config(**{"loss.hard_negatives": True})
  data = run_data.prepare_data(c)
  parts = run_lib.build_parts(c, data=data)
  batch = next(run_data.train_batches(c, data, parts.text, 0))
  want = {k: (v.shape, v.dtype) for k, v in batch.items()}
  got = {
      k: (s, jax.numpy.dtype(d))
      for k, (s, d) in aot_lower.batch_shapes(c, parts).items()
  }
  assert got == want


def test_compiles_on_this_host_and_reads_memory(data_dir):
  """The compile path, with this host's CPU device as the target."""
  c = test_train.tiny_config()
  r = aot.compile_step(c, jax.devices())
  assert r["fits"]
  m = r["memory"]
  assert m["argument"] > 0 and m["peak"] >= m["argument"]
  # The state is donated: its buffers are reused for the new state.
  assert m["alias"] > 0
  assert r["state_bytes"] > 0
  assert "flops" in r["cost"]


# libtpu lets one process at a time use it unless told otherwise; these
# processes only compile.
ENV = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def _aot(tmp_path, *args):
  out = tmp_path / "aot.json"
  cmd = [sys.executable, "-m", "txt2img_jax.aot", f"--json={out}", *args]
  p = subprocess.run(
      cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=ENV
  )
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(out.read_text()), p.stdout


@needs_libtpu
def test_command_compiles_a_tiny_step_for_a_tpu_slice(tmp_path):
  dp, out = _aot(
      tmp_path,
      "--config=configs/perf_b2.py:tiny",
      "--topology=v5e:2x2",
      "--config.flow.depth=3",
  )
  assert dp["devices"] == 4 and dp["device_kind"] == "TPU v5 lite"
  assert dp["fits"] and dp["mesh"] == {"data": 4, "model": 1}
  m = dp["memory"]
  assert m["peak"] == (
      m["argument"] + m["output"] - m["alias"] + m["temp"] + m["code"]
  )
  assert 0 < dp["hbm_used"] < 0.05
  # Data parallel: every device holds the whole state, and gradients are
  # all-reduced.
  assert m["argument"] >= dp["state_bytes"]
  assert dp["collectives"]["all-reduce"]["count"] > 0
  assert dp["step_time_s"] > 0 and 0 < dp["mfu"] < 1
  assert "memory per device: peak" in out and "cost model" in out

  # The scanned DiT's cost, extrapolated from depth 1 and 2, is what the
  # unrolled depth-3 step costs.
  full, _ = _aot(
      tmp_path,
      "--config=configs/perf_b2.py:tiny",
      "--topology=v5e:2x2",
      "--config.flow.depth=3",
      "--config.flow.scan=False",
  )
  assert dp["xla_flops"] == pytest.approx(full["xla_flops"], rel=0.01)
  assert dp["step_time_s"] == pytest.approx(full["step_time_s"], rel=0.02)
  for kind, v in full["collectives"].items():
    assert dp["collectives"][kind]["count"] == v["count"], kind

  fsdp, _ = _aot(
      tmp_path,
      "--config=configs/perf_b2.py:tiny",
      "--topology=v5e:2x2",
      "--config.flow.depth=3",
      "--config.mesh.preset=fsdp",
  )
  # FSDP: each device keeps about a quarter of the state.
  assert fsdp["memory"]["argument"] < 0.5 * dp["memory"]["argument"]


@needs_libtpu
def test_a_topology_jax_cannot_describe_is_one_line(tmp_path):
  p = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.aot",
          "--config=configs/perf_b2.py:tiny",
          "--topology=v9z:1x1",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=ENV,
  )
  assert p.returncode == 1
  assert "--topology='v9z:1x1'" in p.stderr
  assert "Traceback" not in p.stderr
