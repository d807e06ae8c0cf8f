"""`perf` and `sample` run where only the model side is installed.

An accelerator machine may have just jax, flax, optax, orbax and
ml_collections: the data-side packages (TensorFlow, TFDS, grain, CLU,
ArrayRecord) must not be on the path that builds and steps a model. Each
command runs in a subprocess in which those packages cannot be imported, as
if they were not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_SIDE = (
    "tensorflow",
    "tensorflow_datasets",
    "grain",
    "clu",
    "array_record",
)

# A None entry in sys.modules makes `import x` raise ImportError and
# importlib.util.find_spec('x') return None, which is what an uninstalled
# package looks like to the code and to transformers' availability checks.
_BLOCK = f"""
import sys
for name in {DATA_SIDE!r}:
  sys.modules[name] = None
"""
_RUN_MODULE = """
import runpy
module = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _env(data_dir: str) -> dict:
  env = dict(os.environ)
  env.update(
      PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
      TXT2IMG_DATA_DIR=data_dir,
      JAX_PLATFORMS="cpu",
  )
  return env


def _run(argv, cwd, env, light: bool) -> subprocess.CompletedProcess:
  prefix = (
      [sys.executable, "-c", _BLOCK + _RUN_MODULE]
      if light
      else [sys.executable, "-m"]
  )
  return subprocess.run(
      prefix + argv,
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_the_data_side_is_blocked():
  # Without this the tests below could pass with the packages imported.
  for name in DATA_SIDE:
    r = subprocess.run(
        [sys.executable, "-c", _BLOCK + f"import {name}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "halted" in r.stderr, (name, r.stderr)


def test_perf_runs_without_the_data_side(tmp_path, data_dir):
  r = _run(
      [
          "txt2img_jax.perf",
          f"--config={REPO}/configs/restart.py:tiny",
          "--steps=1",
          "--warmup=0",
          "--matmul_n=64",
      ],
      str(tmp_path),
      _env(data_dir),
      True,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "utilisation" in r.stdout, r.stdout


def test_sample_runs_without_the_data_side(tmp_path, data_dir):
  env = _env(data_dir)
  workdir = str(tmp_path / "run")
  # Training reads data, so the run is made with everything installed.
  r = _run(
      [
          "txt2img_jax.main",
          f"--config={REPO}/configs/restart.py:tiny",
          f"--workdir={workdir}",
          "--config.total_steps=2",
      ],
      str(tmp_path),
      env,
      False,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  out = str(tmp_path / "x.png")
  r = _run(
      [
          "txt2img_jax.sample",
          f"--workdir={workdir}",
          "--prompt=a large red circle in the center",
          f"--out={out}",
          "--steps=2",
      ],
      str(tmp_path),
      env,
      True,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.getsize(out) > 0
