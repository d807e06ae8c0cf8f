"""Config helpers: loading a sibling recipe, and checks that run before compiling."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


def load_sibling(config_file: str, name: str):
  """Imports configs/<name>.py next to `config_file` (recipes build on base)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_txt2img_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def to_dict(config: ml_collections.ConfigDict) -> dict:
  return config.to_dict()


def latent_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """The image latent's (H, W, C) implied by the data and the autoencoder."""
  size, f = config.data.image_size, config.autoencoder.factor
  if config.autoencoder.kind != "pixel":
    raise ValueError(f"unknown autoencoder.kind {config.autoencoder.kind!r}; "
                     "this build has 'pixel'")
  if f < 1 or size % f:
    raise ValueError(f"autoencoder.factor={f} must divide "
                     f"data.image_size={size}")
  return size // f, size // f, 3 * f * f
