"""Test-wide settings: CPU only, and a shared data dir for the tiny shapes set."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One prepared tiny shapes set for every test that trains."""
  path = tmp_path_factory.mktemp("shapes_data")
  os.environ["TXT2IMG_DATA_DIR"] = str(path)
  return str(path)
