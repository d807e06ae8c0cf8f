"""The head ablation (experiments/heads_ablation.py, issue #13's defect 3):
z_text "at init" is measured on the run's own step-0 parameters, and each
head's LR is picked by what it drew. Its command line runs in test_cli."""

import json
import os

import jax
import numpy as np

from txt2img_jax.train import run as run_lib
from experiments import common
from experiments import heads_ablation


def test_initial_params_are_the_runs_step_zero(data_dir, tmp_path):
  """With every learning rate at 0 a run ends where it started, so its
  EMA parameters are its step-0 parameters: initial_params must equal them,
  and must differ for another seed."""
  del data_dir
  c = common.recipe("restart", "tiny")
  c.total_steps = 2
  c.head.kind = "grid_query"
  for group in c.optim.groups.values():
    group.lr = 0.0
  c.optim.schedule.eta_min = 0.0  # The floor may not exceed a peak of 0.
  workdir = str(tmp_path / "run")
  common.train_once(c, workdir)
  run = run_lib.load_run(workdir)
  initial = run_lib.initial_params(run)
  for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(run.ema_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  run.config.seed += 1
  other = run_lib.initial_params(run)
  assert any(
      not np.allclose(np.asarray(a), np.asarray(b))
      for a, b in zip(
          jax.tree.leaves(other["text_head"]),
          jax.tree.leaves(initial["text_head"]),
      )
  )
  # The measures at init: cached, and tile_repeat a share in [0, 1].
  measures = heads_ablation.init_measures(workdir, 8)
  assert 0.0 <= measures["init/tile_repeat"] <= 1.0
  with open(os.path.join(workdir, "ztext_init_8.json")) as f:
    assert json.load(f) == measures


def test_pick_takes_what_drew_best():
  results = {
      1e-3: {"eval/object_acc": 0.5, "heldout/object_acc": 0.1},
      2e-3: {"eval/object_acc": 0.6, "heldout/object_acc": 0.0},
      4e-3: {"eval/object_acc": 0.6, "heldout/object_acc": 0.2},
  }
  assert heads_ablation.pick(results) == 4e-3
  results[4e-3]["eval/object_acc"] = 0.1
  assert heads_ablation.pick(results) == 2e-3
