"""The whole trainer on the tiny config: runs, resumes exactly, compiles once,
rejects bad configs before compiling, swaps heads, samples and evaluates."""

import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from txt2img_jax.train import validate
from txt2img_jax.train import run_config
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpoint_trees
from txt2img_jax.train import loop as train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(recipe="base", **overrides):
  module = importlib.import_module(f"configs.{recipe}")
  c = module.get_config("tiny")
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def params_of(workdir):
  raw, step = checkpoint_files.load_raw(workdir)
  return raw, step


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
  """One 6-step run of the tiny base config, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  out = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, out


def test_run_leaves_everything_a_user_needs(tiny_run):
  workdir, out = tiny_run
  files = os.listdir(workdir)
  assert any(f.startswith("events.out.tfevents") for f in files)
  assert {"config.json", "latent_stats.json", "metrics.jsonl"} <= set(files)
  assert os.path.exists(os.path.join(workdir, "samples", "latest.png"))
  _, step = params_of(workdir)
  assert step == 6
  assert out["compiles"] == 1
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6]
  last = train_rows[-1]
  for key in (
      "train/loss_flow",
      "train/kl_raw",
      "train/loss_clip",
      "train/lr/flow",
      "train/grad_norm/text_head",
      "train/param_norm/flow",
      "train/norm_ratio",
      "train/mu_min",
      "train/logvar_max",
      "train/loss_flow_ema",
      "train/nonfinite_steps",
      "train/steps_per_sec",
  ):
    assert key in last, key
    assert np.isfinite(last[key]), key
  assert any(k.startswith("train/loss_flow_bucket/") for k in last)
  assert any("eval/object_acc" in r for r in rows)


def test_resume_gives_the_same_result_as_one_run(tiny_run, tmp_path):
  workdir, _ = tiny_run
  # Stop at step 3 (a checkpoint), then run the same command again.
  split = str(tmp_path / "split")
  train.train_and_evaluate(tiny_config(total_steps=3), split)
  out = train.train_and_evaluate(tiny_config(), split)
  assert out["resumed"] and out["start_step"] == 3
  a, _ = params_of(workdir)
  b, _ = params_of(split)
  for key in ("params", "ema_params", "opt_state"):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
        a[key],
        b[key],
    )
  # The first run logged its last step (3); the resumed run appended after
  # its checkpoint without repeating a step.
  steps = [
      json.loads(l)["step"]
      for l in open(os.path.join(split, "metrics.jsonl"))
      if "train/loss" in l
  ]
  assert steps == [2, 3, 4, 6]


def test_resume_drops_log_lines_past_the_checkpoint(tiny_run, tmp_path):
  # A crash after a log line but before the next checkpoint: the resumed run
  # rewrites those lines instead of keeping two versions of a step.
  workdir, _ = tiny_run
  crashed = str(tmp_path / "crashed")
  train.train_and_evaluate(tiny_config(total_steps=3), crashed)
  with open(os.path.join(crashed, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 4, "train/loss": 123.0}) + "\n")
  train.train_and_evaluate(tiny_config(), crashed)
  rows = [
      json.loads(l)
      for l in open(os.path.join(crashed, "metrics.jsonl"))
      if "train/loss" in l
  ]
  assert [r["step"] for r in rows] == [2, 3, 4, 6]
  assert rows[2]["train/loss"] != 123.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"head.kind": "grid_query", "head.grid_query.grid_size": 5},
            "grid_size",
        ),
        ({"flow.patch_size": 3}, "patch_size"),
        ({"autoencoder.factor": 3}, "factor"),
        ({"head.kind": "nonsense"}, "nonsense"),
        ({"time.sampler.kind": "nonsense"}, "nonsense"),
        ({"flow.time_input": "nonsense"}, "nonsense"),
        ({"loss.kl_kind": "normal"}, "loss.kl_kind='normal'"),
        ({"prng_impl": "philox"}, "prng_impl='philox'"),
        ({"optim.groups.flow.lr": -1.0}, "optim.groups.flow.lr=-1.0"),
        ({"optim.groups.flow.lr": float("nan")}, "optim.groups.flow.lr=nan"),
        ({"mesh.model": 3}, "mesh.model=3"),
        ({"data.name": "nonsense"}, "nonsense"),
        ({"flow.predict": "noise"}, "flow.predict='noise'"),
        ({"data.name": "webdataset"}, "needs data.path"),
        ({"autoencoder.kind": "nonsense"}, "nonsense"),
        ({"autoencoder.kind": "kl_vae"}, "autoencoder.path"),
    ],
)
def test_bad_config_is_a_clear_error_before_compiling(overrides, message):
  with pytest.raises(ValueError, match=message):
    validate.validate_config(tiny_config(**overrides))


def test_rbg_generator_trains_and_refuses_a_switch_on_resume(
    data_dir, tmp_path
):
  """prng_impl=rbg: the state's key is rbg's, the run's config records it,
  and resuming the run with the other generator is a clear error."""
  workdir = str(tmp_path / "rbg")
  try:
    out = train.train_and_evaluate(
        tiny_config(prng_impl="rbg", total_steps=2), workdir
    )
    raw, step = params_of(workdir)
    assert step == 2 and np.asarray(raw["rng"]).shape == (4,)
    assert np.isfinite(out["train"]["train/loss"])
    assert run_config.load(workdir).prng_impl == "rbg"
    with pytest.raises(
        ValueError, match="changes what the run is \\(prng_impl"
    ):
      train.train_and_evaluate(tiny_config(total_steps=4), workdir)
    # Allowed by name, the checkpoint's key still does not fit.
    with pytest.raises(ValueError, match="another prng_impl"):
      train.train_and_evaluate(
          tiny_config(total_steps=4, allow_changed="prng_impl"), workdir
      )
  finally:
    validate.use_prng_impl(tiny_config())  # The process-wide default again.
  assert jax.random.PRNGKey(0).shape == (2,)


def test_merge_matching_loads_by_path_and_shape():
  target = {
      "params": {"enc": {"kernel": np.zeros((2, 3))}, "head": [np.zeros(2)]}
  }
  source = {
      "params": {
          "enc": {"kernel": np.ones((2, 3))},
          "head": [np.ones(3)],
          "old": np.ones(1),
      }
  }
  merged, table = checkpoint_trees.merge_matching(target, source)
  np.testing.assert_array_equal(merged["params"]["enc"]["kernel"], 1.0)
  np.testing.assert_array_equal(merged["params"]["head"][0], 0.0)
  assert table == {
      "loaded": ["params/enc/kernel"],
      "new": ["params/head/0 (shape (3,) -> (2,))"],
      "dropped": ["params/old"],
  }


def test_head_swap_keeps_everything_else(tiny_run, tmp_path, caplog):
  workdir, _ = tiny_run
  new = str(tmp_path / "swap")
  c = tiny_config(total_steps=1, init_from=workdir)
  c.head.kind = "grid_query"
  with caplog.at_level("INFO"):
    train.train_and_evaluate(c, new)
  log = caplog.text
  assert "new" in log and "dropped" in log
  old, _ = params_of(workdir)
  swapped, step = params_of(new)
  assert step == 1
  # The text encoder was loaded from the old run (then took one step).
  a = old["params"]["text_encoder"]
  b = swapped["params"]["text_encoder"]
  diffs = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)
  assert max(jax.tree.leaves(diffs)) < 1e-2
  assert set(swapped["params"]["text_head"]) != set(old["params"]["text_head"])


def test_restart_starts_a_new_cycle_from_the_old_lr(tiny_run, tmp_path):
  workdir, _ = tiny_run
  new = str(tmp_path / "restart")
  c = tiny_config("restart", total_steps=2, init_from=workdir)
  c.head.kind = "pooled_mlp"
  c.flow.predict = "velocity"  # What base.py's run learnt.
  train.train_and_evaluate(c, new)
  rows = [
      json.loads(l)
      for l in open(os.path.join(new, "metrics.jsonl"))
      if "train/loss" in l
  ]
  base_lr = c.optim.groups.flow.lr
  old_cfg = run_config.load(workdir)
  # The old run (warmup_cosine over 6 steps) ended at its end_lr.
  old_end = old_cfg.optim.schedule.end_lr
  # Step 0 of the restart: peak = factor x base; the cycle decays to old_end.
  first = rows[0]["train/lr/flow"]  # mean of steps 0 and 1
  assert first > base_lr
  assert first <= c.restart.peak_factor * base_lr + 1e-12
  assert rows[0]["train/lr/flow"] > old_end


def test_a_restart_that_changes_what_the_flow_predicts_is_refused(
    tiny_run, tmp_path
):
  workdir, _ = tiny_run
  c = tiny_config("restart", total_steps=2, init_from=workdir)
  c.head.kind = "pooled_mlp"
  assert c.flow.predict == "image"  # base.py's run predicts the velocity.
  with pytest.raises(ValueError, match="--config.flow.predict=velocity"):
    train.train_and_evaluate(c, str(tmp_path / "restart"))


def test_sample_writes_one_png_per_image_and_an_index(tiny_run, tmp_path):
  workdir, _ = tiny_run
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(
      "a large red circle in the center\n\na small blue square\n"
  )

  def sample(out_dir, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "txt2img_jax.sample",
            f"--workdir={workdir}",
            f"--prompts_file={prompts}",
            "--num_per_prompt=3",
            "--nouse_mean",
            f"--out_dir={out_dir}",
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

  r = sample(tmp_path / "a")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / "a" / "index.jsonl")]
  assert [(r["prompt_index"], r["sample"]) for r in rows] == [
      (i, k) for i in range(2) for k in range(3)
  ]
  assert rows[3]["prompt"] == "a small blue square"
  assert rows[0]["use_mean"] is False and rows[0]["steps"] > 0
  images = [np.asarray(Image.open(tmp_path / "a" / r["file"])) for r in rows]
  size = tiny_config().data.image_size
  assert images[0].shape == (size, size, 3)
  assert not np.array_equal(images[0], images[1])  # Own z_text draws.
  assert not os.path.exists(tmp_path / "samples.png")  # No grid unasked.
  # The same command draws the same images.
  r = sample(tmp_path / "b")
  assert r.returncode == 0, r.stderr[-3000:]
  for row in rows:
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "b" / row["file"])),
        np.asarray(Image.open(tmp_path / "a" / row["file"])),
    )
  (tmp_path / "empty.txt").write_text("\n \n")
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.sample",
          f"--workdir={workdir}",
          f"--prompts_file={tmp_path / 'empty.txt'}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 1 and "is empty" in r.stderr.splitlines()[-1]


def test_sample_and_evaluate_commands(tiny_run, tmp_path):
  workdir, _ = tiny_run
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out_png = str(tmp_path / "x.png")
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.sample",
          f"--workdir={workdir}",
          "--prompt",
          "a large red circle in the center",
          "--prompt",
          "a small blue square at the top left",
          "--method",
          "heun",
          "--steps",
          "2",
          "--cfg_scale",
          "2",
          f"--out={out_png}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.getsize(out_png) > 0
  out_json = str(tmp_path / "e.json")
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.evaluate",
          f"--workdir={workdir}",
          "--num=4",
          f"--json={out_json}",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(out_json))
  assert summary["eval/num_images"] == 4
  assert "heldout/object_acc" in summary and "object_acc" in r.stdout


def test_lpips_term_is_on_only_in_its_window(data_dir, tmp_path):
  c = tiny_config("structure", total_steps=4, log_every=1)
  c.loss.lpips_start, c.loss.lpips_stop = 1, 3
  workdir = str(tmp_path / "lpips")
  train.train_and_evaluate(c, workdir)
  rows = [
      json.loads(l)
      for l in open(os.path.join(workdir, "metrics.jsonl"))
      if "train/loss" in l
  ]
  weights = [r["train/lpips_weight"] for r in rows]
  np.testing.assert_allclose(weights, [0.0, 0.1, 0.1, 0.0], rtol=1e-6)
  assert all(r["train/lpips_raw"] > 0 for r in rows)
  np.testing.assert_allclose(
      [r["train/loss_lpips"] for r in rows],
      [w * r["train/lpips_raw"] for w, r in zip(weights, rows)],
      rtol=1e-5,
  )
  # The weighted terms add up to the total.
  for r in rows:
    parts = sum(
        r[f"train/loss_{k}"] for k in ("flow", "kl", "clip", "tv", "lpips")
    )
    np.testing.assert_allclose(parts, r["train/loss"], rtol=1e-4)


def test_unknown_config_key_is_a_one_line_error(tmp_path):
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.main",
          "--config=configs/base.py:tiny",
          "--config.optim.nonexistent=1",
          f"--workdir={tmp_path}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert r.returncode != 0
  assert "unknown config field 'nonexistent'" in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.listdir(tmp_path)  # Nothing was written, nothing compiled.
