"""The leak control (experiments/leak.py, issue #13's defect 8): each row
changes only the time sampler, and err(t) is the one-step error it says it
is. Its command line runs in test_cli."""

import json
import os

import numpy as np

from experiments import common
from experiments import leak
from experiments import sweep


def test_each_row_is_one_field_away_from_a_row_above_it():
  configs = []
  for recipe, spec in leak.ROWS:
    _, overrides = sweep.parse_variant(spec)
    assert set(overrides) <= {"time.sampler", "loss.kl_weight"}, spec
    c = common.recipe(recipe)
    sweep.apply_overrides(c, overrides)
    flat = {k: v for k, v in _flatten(c.to_dict())}
    if configs and overrides:
      differing = [
          sum(flat[k] != other.get(k) for k in flat) for other in configs
      ]
      assert 1 in differing, spec
    assert flat not in configs, spec  # No two rows alike.
    configs.append(flat)


def _flatten(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict) and k != "sampler":
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def test_path_errors_are_relative_one_step_errors(data_dir, tmp_path):
  del data_dir
  c = common.recipe("restart", "tiny")
  c.total_steps = 4
  workdir = str(tmp_path / "run")
  common.train_once(c, workdir)
  errors = leak.path_errors(workdir, 8, times=(0.0, 0.5, 1.0))
  # At t = 1, x_t is the image (up to sigma_min) and (1 - t) v vanishes.
  assert errors["path/err_t1"] < 1e-6
  # An untrained network at t = 0 is no better than the average image.
  assert errors["path/err_t0"] > 0.5
  assert np.isfinite(errors["path/err_t0.5"])
  # Cached for the step it measured, and read back.
  with open(os.path.join(workdir, "path_errors_8.json")) as f:
    assert json.load(f) == {"step": 4, "errors": errors}
  assert leak.path_errors(workdir, 8, times=(0.0, 1.0)) == errors
