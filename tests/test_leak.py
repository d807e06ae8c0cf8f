"""The leak control (experiments/leak.py, issue #13's defect 8): each row
changes only the time sampler, and err(t) is the one-step error it says it
is. Its command line runs in test_cli."""

import json
import os

import numpy as np

from txt2img_jax.experiments import common
from txt2img_jax.experiments import leak
from txt2img_jax.experiments import sweep


def test_every_row_changes_only_the_time_sampler():
  samplers = set()
  for recipe, spec in leak.ROWS:
    _, overrides = sweep.parse_variant(spec)
    assert set(overrides) <= {"time.sampler"}, spec
    c = common.recipe(recipe)
    sweep.apply_overrides(c, overrides)
    reference = common.recipe(recipe)
    reference.time.sampler = c.time.sampler
    assert c.to_json() == reference.to_json(), spec
    samplers.add((recipe, c.time.sampler.to_json()))
  assert len(samplers) == len(leak.ROWS)  # No two rows alike.


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
