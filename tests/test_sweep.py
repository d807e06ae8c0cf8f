"""The sweep's variant syntax (experiments/sweep.py): parsed, checked and
applied before anything trains. Its command line runs in test_cli."""

import pytest

from txt2img_jax.evaluation import benchmark
from txt2img_jax.utils import config_lib
from experiments import common
from experiments import sweep


def test_parse_variant_literals_strings_and_dicts():
  label, o = sweep.parse_variant(
      "mix: loss.clip_weight=0.5, head.kind=grid_query,"
      "time.sampler.then={'kind': 'uniform', 't_max': 1.0},batch_size=32"
  )
  assert label == "mix"
  assert o == {
      "loss.clip_weight": 0.5,
      "head.kind": "grid_query",
      "time.sampler.then": {"kind": "uniform", "t_max": 1.0},
      "batch_size": 32,
  }
  assert sweep.parse_variant("baseline:") == ("baseline", {})


@pytest.mark.parametrize("text", ["no colon", ":x=1", "a:clip_weight"])
def test_parse_variant_rejects_malformed(text):
  with pytest.raises(ValueError):
    sweep.parse_variant(text)


def test_apply_overrides_sets_nested_fields_and_refuses_unknown():
  c = common.recipe("restart")
  sweep.apply_overrides(
      c, {"loss.clip_weight": 0.5, "time.sampler.then": {"kind": "uniform"}}
  )
  assert c.loss.clip_weight == 0.5
  assert c.time.sampler.then.to_dict() == {"kind": "uniform"}
  for key in ("loss.no_such_field", "nope.kl_weight"):
    with pytest.raises(ValueError, match="no config field"):
      sweep.apply_overrides(common.recipe("restart"), {key: 1})


def test_variant_steps_and_rescaled_schedules():
  assert sweep.variant_steps(None, 400) == 400
  assert sweep.variant_steps("2x", 400) == 800
  assert sweep.variant_steps(123, 400) == 123
  c = common.recipe("restart")
  assert (
      c.total_steps,
      c.optim.schedule.warmup_steps,
      c.optim.schedule.t0,
      c.time.sampler.blend_steps,
  ) == (1600, 100, 1500, 3200)
  # The default rescaled to 800 steps is the recipe's "800" variant (the
  # default the docs' 800-step tables were measured with).
  config_lib.rescale_steps(c, 800)
  c800 = common.recipe("restart", "800")
  assert (c800.eval_every, c800.sample_every, c800.checkpoint_every) == (
      800,
      400,
      200,
  )
  for field in ("eval_every", "sample_every", "checkpoint_every"):
    c800[field] = c[field]  # Cadences; the sweep sets its own.
  assert c.to_json() == c800.to_json()
  assert (
      c.total_steps,
      c.optim.schedule.warmup_steps,
      c.optim.schedule.t0,
      c.time.sampler.blend_steps,
  ) == (800, 50, 750, 1600)
  config_lib.rescale_steps(c, 400)
  # The cycle still ends on the last step; the blend keeps its pace.
  assert (
      c.total_steps,
      c.optim.schedule.warmup_steps,
      c.optim.schedule.t0,
      c.time.sampler.blend_steps,
  ) == (400, 25, 375, 800)
  b = common.recipe("base")
  config_lib.rescale_steps(b, 400)
  assert b.optim.schedule.decay_steps == 400


def test_every_suite_variant_applies():
  for spec in sweep.SUITES["levers"]:
    _, overrides = sweep.parse_variant(spec)
    overrides = dict(overrides)
    overrides.pop("total_steps", None)
    sweep.apply_overrides(common.recipe("restart"), overrides)


def test_a_stopped_run_stops_the_experiment(monkeypatch, tmp_path):
  # SIGTERM/SIGINT end train_and_evaluate early (checkpoint saved); the
  # experiment must not score the partial run and start the next one.
  calls = []

  def fake_train(config, workdir):
    calls.append(workdir)
    return {"stopped_by": "SIGTERM"}

  monkeypatch.setattr(common.train, "train_and_evaluate", fake_train)
  c = common.recipe("restart", "tiny")
  with pytest.raises(SystemExit) as e:
    common.train_once(c, str(tmp_path / "run"))
  assert e.value.code == 0 and len(calls) == 1


def test_final_evaluation_is_the_runs_last_benchmark():
  full = {f"eval/{k}": 0.5 for k in benchmark.BY_COUNT_KEYS}
  full.update({"eval/object_acc": 0.6, "heldout/object_acc": 0.4})
  rows = [
      {"step": 400, "train/loss": 1.0, **full},
      {"step": 800, "train/loss": 0.5},
      {"step": 800, **full, "eval/object_acc": 0.7},
  ]
  got = common.final_evaluation(rows, 800)
  assert got["eval/object_acc"] == 0.7 and got["heldout/object_acc"] == 0.4
  assert "train/loss" not in got and "step" not in got
  assert common.final_evaluation(rows, 600) is None  # Nothing logged there.
  # A benchmark without the per-count accuracies (older runs): scored anew.
  partial = {"step": 800, "eval/object_acc": 0.7, "heldout/object_acc": 0.4}
  assert common.final_evaluation(rows[:2] + [partial], 800) is None


def test_the_tables_command_names_its_variants():
  import types

  f = types.SimpleNamespace(
      suite="",
      recipe="restart",
      config_variant="",
      only="",
      variant=["restart.py:", "1600 steps:total_steps=2x"],
      steps=800,
      seeds="0,1,2",
      num=500,
  )
  assert sweep.command_line(f) == (
      "python -m experiments.sweep --recipe=restart "
      "--variant='restart.py:' --variant='1600 steps:total_steps=2x' "
      "--steps=800 --seeds=0,1,2 --num=500"
  )


def test_a_number_of_steps_is_a_variant_of_the_recipe():
  c = common.recipe("restart", "400")
  assert (
      c.total_steps,
      c.optim.schedule.warmup_steps,
      c.optim.schedule.t0,
      c.time.sampler.blend_steps,
  ) == (400, 25, 375, 800)
  assert (c.eval_every, c.sample_every, c.checkpoint_every) == (400, 200, 100)
  with pytest.raises(ValueError, match="a number of steps must be >= 1"):
    common.recipe("restart", "0")
  with pytest.raises(ValueError, match="unknown config variant '4x'"):
    common.recipe("restart", "4x")


def test_a_finished_run_is_reused_only_for_its_own_config(
    monkeypatch, tmp_path
):
  # A default that changed since (restart.py now predicts the image) must
  # not reuse a finished run of the recipe before it under the same name.
  import json

  workdir = tmp_path / "restart.py_s0"
  workdir.mkdir()
  old = common.recipe("restart", "tiny,velocity")
  (workdir / "config.json").write_text(json.dumps(old.to_dict()))
  monkeypatch.setattr(
      common.checkpoint_files,
      "resolve_checkpoint",
      lambda w: (str(workdir / "checkpoints" / "6"), old.total_steps),
  )
  trained = []
  monkeypatch.setattr(
      common.train, "train_and_evaluate", lambda c, w: trained.append(w)
  )
  common.train_once(common.recipe("restart", "tiny,velocity"), str(workdir))
  with pytest.raises(ValueError, match="flow.predict 'velocity' -> 'image'"):
    common.train_once(common.recipe("restart", "tiny"), str(workdir))
  assert not trained
