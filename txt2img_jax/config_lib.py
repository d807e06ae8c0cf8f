"""Config helpers: loading a sibling recipe."""

from __future__ import annotations

import importlib.util
import os



def load_sibling(config_file: str, name: str):
  """Imports configs/<name>.py next to `config_file` (recipes build on base)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_txt2img_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
