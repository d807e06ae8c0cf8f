"""experiments/sampler.py: sampler settings scored on trained runs, seeds
pooled, scores cached per run. Its command line runs in test_cli."""

import json
import os

import pytest

from txt2img_jax.evaluation import structure
from experiments import common
from experiments import sampler


def test_parse_setting():
  assert sampler.parse_setting("the run's:") == ("the run's", {})
  assert sampler.parse_setting("h: steps=1, method=heun,cfg_scale=3") == (
      "h",
      {"steps": 1, "method": "heun", "cfg_scale": 3.0},
  )
  assert sampler.parse_setting("m:use_mean=False") == ("m", {"use_mean": False})


@pytest.mark.parametrize(
    "text, match",
    [
        ("no colon", "expected 'label:field=value"),
        (":steps=1", "expected 'label:field=value"),
        ("x:num_steps=1", "'num_steps' is not one of steps, method"),
        ("x:steps", "'steps' is not field=value"),
        ("x:steps=1.5", "steps=1.5 is not int"),
        ("x:steps=True", "steps=True is not int"),
        ("x:use_mean=1", "use_mean=1 is not bool"),
    ],
)
def test_a_bad_setting_is_named(text, match):
  with pytest.raises(ValueError, match=match):
    sampler.parse_setting(text)


def test_family():
  assert sampler.family("workdirs/sweep/restart.py_s2") == (
      "workdirs/sweep/restart.py",
      2,
  )
  assert sampler.family("workdirs/restart/") == ("workdirs/restart", None)


def test_settings_are_applied_cached_and_pooled(
    data_dir, tmp_path, monkeypatch
):
  del data_dir
  c = common.recipe("restart", "tiny")
  c.total_steps = 2
  workdir = str(tmp_path / "run_s0")
  common.train_once(c, workdir)
  own = c.sample.num_steps
  assert own != 1
  settings = [
      sampler.parse_setting("the run's:"),
      sampler.parse_setting("one:steps=1"),
      sampler.parse_setting(f"spelled:steps={own}"),
      sampler.parse_setting("heun:method=heun"),
  ]
  out = sampler.score_run(workdir, settings, 4)
  # The run's own steps, spelled out, are the same setting: one cache entry;
  # a setting that leaves the steps alone gets the run's, not the last
  # setting's.
  with open(os.path.join(workdir, "sampler_4.json")) as f:
    keys = sorted(tuple(sorted(json.loads(k).items())) for k in json.load(f))
  base = dict(
      steps=own,
      method=c.sample.method,
      cfg_scale=float(c.sample.cfg_scale),
      use_mean=bool(c.sample.use_mean),
  )
  assert c.sample.method != "heun"
  assert keys == sorted(
      tuple(sorted(d.items()))
      for d in (base, {**base, "steps": 1}, {**base, "method": "heun"})
  )
  assert out["spelled"] == out["the run's"]
  # One Euler step is another sampler: other images.
  assert (
      out["one"]["eval/pixel_mse_rel"] != out["the run's"]["eval/pixel_mse_rel"]
  )

  # Scored again: from the cache, nothing sampled.
  def fail(*a, **k):
    raise AssertionError("scored again")

  monkeypatch.setattr(structure.Evaluator, "benchmark", fail)
  assert sampler.score_run(workdir, settings, 4) == out

  # Seeds of one name pool into a row: mean ± std.
  other = {k: dict(v) for k, v in out.items()}
  other["one"]["eval/object_acc"] = out["one"]["eval/object_acc"] + 0.5
  text = sampler.table(
      {workdir: out, str(tmp_path / "run_s1"): other}, settings
  )
  rows = [r for r in text.splitlines() if "| one |" in r]
  assert len(rows) == 1 and "| 2 |" in rows[0]
  mean = out["one"]["eval/object_acc"] + 0.25
  assert f"{mean:.3f} ± 0.250" in rows[0]
