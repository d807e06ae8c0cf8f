"""Own images end to end: a user's folder, prepared once with the KL-VAE's
moments cached, trained without running the frozen encoder, then sampled
from its workdir alone."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import run_data
from txt2img_jax.models import latents
from txt2img_jax.train import loop as train
from txt2img_jax.data import records
from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib

import test_kl_vae
import test_train


def write_folder(path, num=20, size=32):
  os.makedirs(path)
  with open(os.path.join(path, "metadata.jsonl"), "w") as f:
    for i in range(num):
      ex = shapes.example(0, "train", i, size)
      Image.fromarray(ex["image"]).save(os.path.join(path, f"{i:03d}.png"))
      f.write(
          json.dumps(
              {
                  "file_name": f"{i:03d}.png",
                  "text": [ex["caption"], "another caption"],
              }
          )
          + "\n"
      )
    f.write(json.dumps({"file_name": "gone.png", "text": "missing"}) + "\n")


def folder_config(folder, vae_dir):
  c = test_train.tiny_config("folder")
  c.data.path = folder
  c.autoencoder.kind = "kl_vae"
  c.autoencoder.path = vae_dir
  return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("own")
  folder = str(root / "my_images")
  write_folder(folder)
  vae_dir = str(root / "vae")
  test_kl_vae._save_random_vae(vae_dir, **test_kl_vae.VARIANTS["sd"])
  os.environ["TXT2IMG_DATA_DIR"] = str(root / "data")
  return folder, vae_dir, root


def test_kl_vae_latent_shape_from_its_config(setup):
  folder, vae_dir, _ = setup
  c = folder_config(folder, vae_dir)
  assert latents.latent_shape(c) == (8, 8, 4)  # 16 px, two levels: /2.


def test_folder_run_on_cached_vae_moments(setup, monkeypatch):
  folder, vae_dir, root = setup
  c = folder_config(folder, vae_dir)
  vae = latents.build(c)
  data = run_data.prepare_data(c, vae)
  assert set(data.extras()) == {"moments_mean", "moments_logvar"}
  report = json.load(open(os.path.join(data.out_dir, records.REPORT)))
  assert report["reasons"]["missing_file"]["count"] == 1
  # The cached moments are the VAE's own.
  rec = records.decode_record(data.as_data_source("train")[0])
  mean, _ = jax.jit(vae.encode_moments)(vae.params, rec["image"][None])
  np.testing.assert_allclose(
      rec["moments_mean"], np.asarray(mean)[0], rtol=1e-5, atol=1e-5
  )

  # Training never encodes an image: batches carry moments, not pixels.
  seen = []
  original = run_data.train_batches

  def spy(*args, **kwargs):
    for b in original(*args, **kwargs):
      seen.append(sorted(b))
      yield b

  monkeypatch.setattr(run_data, "train_batches", spy)
  workdir = str(root / "run")
  out = train.train_and_evaluate(c, workdir)
  assert seen and all("image" not in k and "moments_mean" in k for k in seen)
  assert np.isfinite(out["train"]["train/loss"])
  assert np.isfinite(out["eval"]["val/flow"])
  # The mosaic measures of the samples, through the VAE's decoder.
  assert np.isfinite(out["eval"]["val/blockiness"])
  assert np.isfinite(out["eval"]["val/hf"])
  # FD and KID against the first eval.fid_num train records, whose feature
  # statistics are cached beside the prepared data.
  assert out["eval"]["val/fid_num"] == 8
  assert out["eval"]["val/fd_alexnet"] > 0
  assert np.isfinite(out["eval"]["val/kid_alexnet"])
  assert out["eval"]["val/kid_alexnet_std"] >= 0
  cached = os.listdir(os.path.join(data.out_dir, "fid_stats"))
  assert len(cached) == 1 and cached[0].startswith("alexnet_")
  assert cached[0].endswith("_r64_s16_train_n8.npz")

  # The run rebuilds from its workdir alone and draws through the VAE.
  run = run_lib.load_run(workdir, with_data=False)
  ids, mask = tokenizer_lib.tokenize(
      run.text.tokenizer, ["a red circle"], c.data.max_len
  )
  images = run.generate(
      run.ema_params,
      run.frozen,
      run.stats,
      ids,
      mask,
      jax.random.PRNGKey(0),
      num_steps=2,
      method="euler",
      cfg_scale=1.0,
      use_mean=True,
  )
  assert images.shape == (1, 16, 16, 3)
  assert np.all(np.isfinite(np.asarray(images)))
