"""The judging side's files on a bucket: sample, evaluate, diagnose, health
and the models' weight files given as gs:// URLs, on an emulated bucket
(tests/emulated_bucket.py) that records every local file call handed a URL.

Each test calls the functions the commands call, on tiny inputs; none needs
a trained run (an end-to-end run on a gs:// workdir is test_remote_paths').
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from emulated_bucket import EmulatedBucket
from txt2img_jax.utils import paths


@pytest.fixture
def bucket(tmp_path):
  with EmulatedBucket(tmp_path / "buckets") as b:
    yield b
  assert b.bypasses == [], "\n".join(b.bypasses)


def _png(bucket, url) -> np.ndarray:
  local = bucket.local(url)
  assert os.path.isfile(local), url
  return np.asarray(Image.open(local))


# --- sample ------------------------------------------------------------------


class _Run:
  """What sample_files.write_samples reads of a loaded run."""

  step = 7
  workdir = "gs://bk/run"

  def __init__(self, tokenizer):
    self.config = ml_collections.ConfigDict(
        {"eval": {"batch_size": 2}, "data": {"max_len": 8}}
    )
    self.text = types.SimpleNamespace(tokenizer=tokenizer)

  def images(self, ids, mask, seed, offset=0, **settings):
    del mask, settings
    rng = np.random.default_rng(seed + offset)
    return rng.random((len(ids), 8, 8, 3), dtype=np.float32)


def test_sample_reads_prompts_and_writes_images_to_a_bucket(bucket):
  from txt2img_jax.data import tokenizer as tokenizer_lib
  from txt2img_jax.evaluation import sample_files as sample
  from txt2img_jax.utils.errors import UserError

  paths.write_text("gs://bk/prompts.txt", "a red circle\n\n  a blue square \n")
  prompts = sample.read_prompts("gs://bk/prompts.txt")
  assert prompts == ["a red circle", "a blue square"]
  with pytest.raises(UserError, match="no such file"):
    sample.read_prompts("gs://bk/nothing.txt")
  paths.write_bytes("gs://bk/latin1.txt", "café".encode("latin-1"))
  with pytest.raises(UserError, match="not UTF-8"):
    sample.read_prompts("gs://bk/latin1.txt")

  tok = tokenizer_lib.build_word_tokenizer(
      "a red circle blue square".split(), 8
  )
  run = _Run(tok)
  settings = dict(method="euler", num_steps=2, cfg_scale=1.0, use_mean=False)
  n = sample.write_samples(run, prompts, 2, "gs://bk/out", settings, seed=3)
  assert n == 4
  rows = [
      json.loads(l)
      for l in open(bucket.local("gs://bk/out/index.jsonl"), encoding="utf-8")
  ]
  assert [(r["prompt_index"], r["sample"]) for r in rows] == [
      (0, 0),
      (0, 1),
      (1, 0),
      (1, 1),
  ]
  assert rows[0]["workdir"] == "gs://bk/run" and rows[0]["steps"] == 2
  assert _png(bucket, f"gs://bk/out/{rows[3]['file']}").shape == (8, 8, 3)
  assert sorted(os.listdir(bucket.local("gs://bk/out"))) == sorted(
      [r["file"] for r in rows] + ["index.jsonl"]
  )

  images = run.images(np.zeros((2, 8)), None, seed=0)
  grid = sample.prompt_grid(images, prompts, 4)
  sample.save_image(grid, "gs://bk/grids/x.png")
  assert _png(bucket, "gs://bk/grids/x.png").shape[::-1][1:] == grid.size
  sample.save_image(grid, "gs://bk/grids/x.jpg")  # The extension's format.
  assert Image.open(bucket.local("gs://bk/grids/x.jpg")).format == "JPEG"


# --- evaluate ----------------------------------------------------------------


def test_evaluate_writes_its_json_to_a_bucket(bucket, capsys):
  from txt2img_jax import evaluate

  evaluate.write_json("gs://bk/eval/out.json", {"step": 3, "val/fd": 1.5})
  with open(bucket.local("gs://bk/eval/out.json")) as f:
    assert json.load(f) == {"step": 3, "val/fd": 1.5}
  assert "wrote gs://bk/eval/out.json" in capsys.readouterr().out


def test_sample_grid_and_prompts_file_of_the_evaluators(bucket):
  from txt2img_jax.evaluation import prompts as prompts_lib
  from txt2img_jax.evaluation import structure

  grid = Image.fromarray(np.full((8, 16, 3), 200, np.uint8))
  path = structure.save_grid(grid, "gs://bk/run", 12)
  assert path == "gs://bk/run/samples/step_0000012.png"
  for name in ("step_0000012.png", "latest.png"):
    assert _png(bucket, f"gs://bk/run/samples/{name}").shape == (8, 16, 3)

  paths.write_text("gs://bk/eval_prompts.txt", "one\n\ntwo\n")
  config = ml_collections.ConfigDict(
      {"eval": {"prompts": "gs://bk/eval_prompts.txt"}}
  )
  assert prompts_lib.prompt_list(config, None, None) == (["one", "two"], None)
  config.eval.prompts = "gs://bk/none.txt"
  with pytest.raises(FileNotFoundError, match="no such file"):
    prompts_lib.prompt_list(config, None, None)


def test_fd_reference_statistics_are_cached_in_a_bucket(bucket, monkeypatch):
  from test_fid import _Folder
  from test_train import tiny_config
  from txt2img_jax.data import tokenizer as tokenizer_lib
  from txt2img_jax.evaluation import fd_measure

  images = np.random.default_rng(0).random((6, 16, 16, 3), dtype=np.float32)
  data = _Folder("gs://bk/data", images)
  config = tiny_config("folder", **{"eval.fid_num": 5})
  tok = tokenizer_lib.build_word_tokenizer(["image"] + list("0123456789"), 8)
  first = fd_measure.FdMeasure(config, data, tok)
  [name] = os.listdir(bucket.local("gs://bk/data/fid_stats"))
  assert name.endswith("_s16_train_n5.npz")

  calls = []

  class Counting:  # The second measure must read the cache, not compute.

    def __getattr__(self, attr):
      return getattr(first.features, attr)

    def __call__(self, *args):
      calls.append(len(args[0]))
      return first.features(*args)

  monkeypatch.setattr(fd_measure.features_lib, "load", lambda *a: Counting())
  again = fd_measure.FdMeasure(config, data, tok)
  assert calls == []
  for k in first.ref:
    np.testing.assert_array_equal(again.ref[k], first.ref[k])


# --- diagnose ----------------------------------------------------------------


def test_diagnosis_writes_its_report_and_plots_to_a_bucket(bucket, tmp_path):
  from test_diagnose import STEPS, _healthy_run
  from txt2img_jax import diagnosis

  workdir = _healthy_run(tmp_path / "run", buckets=[np.ones(len(STEPS))] * 2)
  report = diagnosis.run(workdir, "gs://bk/diag", 5000)
  local = bucket.local("gs://bk/diag")
  with open(os.path.join(local, "report.json")) as f:
    assert json.load(f) == diagnosis.report_to_json(report)
  with open(os.path.join(local, "report.txt")) as f:
    assert f.read() == diagnosis.format_report(report)
  pngs = {n for n in os.listdir(local) if n.endswith(".png")}
  assert {"losses.png", "lr.png", "norms.png", "t_buckets.png"} <= pngs
  assert Image.open(os.path.join(local, "losses.png")).format == "PNG"


def test_diagnose_command_with_a_bucket_out_dir(tmp_path):
  from test_diagnose import _healthy_run

  workdir = _healthy_run(tmp_path / "run")
  root = tmp_path / "buckets"
  tests = os.path.dirname(os.path.abspath(__file__))
  r = subprocess.run(
      [
          sys.executable,
          os.path.join(tests, "with_bucket.py"),
          str(root),
          "-m",
          "txt2img_jax.diagnose",
          f"--workdir={workdir}",
          "--out_dir=gs://bk/diag",
      ],
      cwd=os.path.dirname(tests),
      env=dict(
          os.environ,
          PYTHONPATH=os.pathsep.join(
              [os.path.dirname(tests), os.environ.get("PYTHONPATH", "")]
          ),
      ),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "wrote plots and report.json to gs://bk/diag" in r.stdout
  assert os.path.isfile(root / "bk" / "diag" / "report.json")


def test_diagnosis_of_a_bucket_workdir(bucket, tmp_path):
  from test_diagnose import _healthy_run
  from txt2img_jax import diagnosis
  from txt2img_jax.utils import runfiles

  if "paths" not in vars(runfiles):
    pytest.skip("utils/runfiles reads a run's files through utils/paths later")
  workdir = _healthy_run(tmp_path / "run")
  shutil.copytree(workdir, bucket.local("gs://bk/run"))
  local = diagnosis.run(workdir, str(tmp_path / "diag"), 5000)
  remote = diagnosis.run("gs://bk/run", None, 5000)
  remote, local = map(diagnosis.report_to_json, (remote, local))
  assert remote.pop("workdir") == "gs://bk/run"
  local.pop("workdir")
  assert remote == local
  assert os.path.isfile(bucket.local("gs://bk/run/diagnose/report.json"))


# --- health ------------------------------------------------------------------


def test_health_files_on_a_bucket(bucket):
  from txt2img_jax import health_checks
  from txt2img_jax.health_checks import mosaic
  from txt2img_jax.health_checks import overfit

  workdir = "gs://bk/health"
  overfit._prepare_workdir(workdir)  # pylint: disable=protected-access
  assert os.listdir(bucket.local(workdir)) == [overfit.MARKER]
  paths.write_text(f"{workdir}/metrics.jsonl", "{}\n")  # A check's leftovers
  overfit._prepare_workdir(workdir)  # pylint: disable=protected-access
  assert os.listdir(bucket.local(workdir)) == [overfit.MARKER]  # are wiped.
  paths.write_text("gs://bk/precious/notes.txt", "x")
  with pytest.raises(ValueError, match="refusing"):
    overfit._prepare_workdir("gs://bk/precious")  # pylint: disable=protected-access
  assert os.path.isfile(bucket.local("gs://bk/precious/notes.txt"))

  numbers = {
      "curve": {
          "step": [1, 2, 3],
          "loss_flow": [1.0, 0.6, 0.5],
          "loss_flow_ema": [None, 0.8, 0.7],
      },
      "loss_flow_first": 1.0,
      "min_fall": 0.2,
      "fall": 0.45,
      "rel": 0.5,
      "break_targets": False,
  }
  result = health_checks.Result("overfit", True, "fine", numbers)
  health_checks.plot_overfit(result, f"{workdir}/overfit.png")
  assert Image.open(bucket.local(f"{workdir}/overfit.png")).format == "PNG"

  real = np.zeros((2, 4, 4, 3))
  mosaic._save_pairs(real, real + 1, f"{workdir}/mosaic.png")  # pylint: disable=protected-access
  assert _png(bucket, f"{workdir}/mosaic.png").shape == (16, 16, 3)


# --- weight files ------------------------------------------------------------

_VAE = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}


def _save_vae(folder: str) -> None:
  """A random diffusers-layout KL-VAE, written by numpy alone."""
  from safetensors.numpy import save_file
  from txt2img_jax.models import kl_vae

  os.makedirs(folder)
  with open(os.path.join(folder, kl_vae.CONFIG_FILE), "w") as f:
    json.dump(_VAE, f)
  described = kl_vae.describe(folder)
  shapes = kl_vae._expected_shapes(described.module, described.config)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  tensors = {
      kl_vae._flax_to_torch_name(names): rng.standard_normal(  # pylint: disable=protected-access
          kl_vae._to_torch_layout(shape)  # pylint: disable=protected-access
      ).astype(
          np.float32
      )
      for names, shape in shapes.items()
  }
  save_file(tensors, os.path.join(folder, kl_vae.WEIGHTS_FILE))


def test_a_kl_vae_is_read_from_a_bucket(bucket, tmp_path):
  from txt2img_jax.models import kl_vae
  from txt2img_jax.models import latents

  _save_vae(str(tmp_path / "vae"))
  shutil.copytree(tmp_path / "vae", bucket.local("gs://bk/vae"))
  remote = kl_vae.load("gs://bk/vae")
  local = kl_vae.load(str(tmp_path / "vae"))
  assert remote.weights_hash == local.weights_hash
  assert remote.fingerprint() == local.fingerprint()
  config = ml_collections.ConfigDict(
      {
          "autoencoder": {"kind": "kl_vae", "path": "gs://bk/vae"},
          "data": {"image_size": 16},
          "dtype": "float32",
      }
  )
  assert latents._kl_vae_shape(config) == (8, 8, 4)  # pylint: disable=protected-access
  assert latents._kl_vae(config).weights_hash == local.weights_hash  # pylint: disable=protected-access
  with pytest.raises(FileNotFoundError, match="does not exist"):
    kl_vae.load("gs://bk/no_vae")


def test_torch_weights_are_read_from_a_bucket(bucket):
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch (test-only) is not installed")
  import torch

  from txt2img_jax.evaluation import features
  from txt2img_jax.evaluation import torch_weights

  for legacy in (False, True):
    url = f"gs://bk/weights/s{legacy}.pth"
    os.makedirs(os.path.dirname(bucket.local(url)), exist_ok=True)
    torch.save(
        {"w": torch.arange(3.0)},
        bucket.local(url),
        _use_new_zipfile_serialization=not legacy,
    )
    assert torch_weights.load_state_dict(url)["w"].tolist() == [0, 1, 2]
  # The FID network's file, read (and refused: not its state dict).
  with pytest.raises(ValueError, match="not the FID Inception's state dict"):
    features.load("inception", 0, "gs://bk/weights/sFalse.pth")
  with pytest.raises(FileNotFoundError, match="is not a file"):
    features.load("inception", 0, "gs://bk/weights/none.pth")


def test_text_encoder_and_clip_folders_are_copied_from_a_bucket(
    bucket, tmp_path, monkeypatch
):
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch (test-only) is not installed")
  from test_text_encoders import save_tiny_encoders
  from txt2img_jax.evaluation import prompts as prompts_lib
  from txt2img_jax.models import text_encoder
  from txt2img_jax.models import text_encoder_weights

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  folder = tmp_path / "clip_full"
  save_tiny_encoders([("clip_full", 0, folder)])
  shutil.copytree(folder, bucket.local("gs://bk/models/clip_full"))
  local = text_encoder.load_pretrained_text_encoder(str(folder))
  remote = text_encoder.load_pretrained_text_encoder("gs://bk/models/clip_full")
  assert remote.identity == local.identity
  copy = os.path.join(
      text_encoder_weights.remote_cache_dir(), "gs", "bk", "models", "clip_full"
  )
  assert os.path.isfile(os.path.join(copy, "model.safetensors"))
  assert not os.path.exists(os.path.join(copy, "reference.npz"))  # Not read.
  assert prompts_lib.ClipScorer("gs://bk/models/clip_full").size == 16
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    text_encoder.load_pretrained_text_encoder("gs://bk/models/none")
