"""Test-wide settings: CPU only, and a shared data dir for the tiny shapes set."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests check behaviour, not speed, and most of their time is XLA
# compiling tiny steps: LLVM's optimisation level 1 compiles them ~30% faster
# (`python -m txt2img_jax.perf --config=configs/restart.py:tiny --steps=2`
# with XLA_FLAGS=--xla_backend_optimization_level=1: 19 s against 29 s wall).
# Subprocesses inherit it. Trained runs keep XLA's default: on the default
# recipe's step level 1 saved ~4 s of compile and ran each step 0-4% slower.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
  ).strip()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared tiny shapes set for every test that trains."""
  path = tmp_path_factory.mktemp("shapes_data")
  os.environ["TXT2IMG_DATA_DIR"] = str(path)
  return str(path)


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
  """jax's persistent compilation cache for the in-process tests of this
  worker: every trainer a test builds makes a new jitted step, which the
  in-memory cache never reuses, while the tiny configs' steps repeat across
  tests (compiles of 1 s or more are stored). Subprocesses do not inherit
  it; the modules that start them choose their own."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  path = str(tmp_path_factory.mktemp("jax_cache"))
  old_dir = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", path)
  cc.reset_cache()
  yield path
  jax.config.update("jax_compilation_cache_dir", old_dir)
  cc.reset_cache()
