"""The cache of a frozen text encoder's features: written by `prepare` for every caption,
read by training instead of running the encoder, keyed by the encoder that made it.
"""

import dataclasses
import json
import os
import shutil
import traceback

import numpy as np
import pytest

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import run_data
from txt2img_jax.models import latents
from txt2img_jax.train import loop as train
from txt2img_jax.data import pipeline
from txt2img_jax.data import records
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import text_encoder as text_encoder_lib

import test_own_images
import test_text_encoders
import test_train

MAX_LEN = test_text_encoders.MAX_LEN


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("text_cache")
  folder = str(root / "images")
  test_own_images.write_folder(
      folder
  )  # Two captions an image, one missing file.
  for name in ("three.png", "one.png"):
    shutil.copy(os.path.join(folder, "000.png"), os.path.join(folder, name))
  with open(
      os.path.join(folder, "metadata.jsonl"), "a"
  ) as f:  # One with three, one with one.
    f.write(
        json.dumps(
            {
                "file_name": "three.png",
                "text": ["a red circle", "a blue square", "big green"],
            }
        )
        + "\n"
    )
    f.write(
        json.dumps({"file_name": "one.png", "text": "big red square"}) + "\n"
    )
  enc_a, enc_b = str(root / "clip_a"), str(root / "clip_b")
  test_text_encoders.save_tiny_encoders(
      [("clip", 0, enc_a), ("clip", 1, enc_b)]
  )
  os.environ["TXT2IMG_DATA_DIR"] = str(root / "data")
  return folder, enc_a, enc_b, root


def cached_config(folder, encoder, **overrides):
  c = test_train.tiny_config("folder", **overrides)
  c.data.path = folder
  c.data.max_len = MAX_LEN
  c.text_encoder.name = encoder
  c.data.cache_text = True
  c.data.cache_captions = 2
  return c


def test_prepare_caches_every_caption(setup):
  folder, enc_a, _, _ = setup
  c = cached_config(folder, enc_a)
  data = run_data.prepare_data(c, latents.build(c))
  assert data.extras() == {
      "text_tokens": {"dtype": "<f2", "shape": [2, MAX_LEN, 32]}
  }
  assert (
      data.report["captions_dropped"] == 1
  )  # The third caption of the extra row.
  enc = text_encoder_lib.load_pretrained_text_encoder(enc_a)
  source = data.as_data_source("train")
  recs = [records.decode_record(source[i]) for i in range(len(source))]
  two = next(r for r in recs if r["captions"][0] == "a red circle")
  assert two["captions"] == ["a red circle", "a blue square"]
  ids, mask = tokenizer_lib.tokenize(enc.tokenizer, two["captions"], MAX_LEN)
  want = np.asarray(enc.apply(enc.params, ids, mask))
  got = two["text_tokens"].astype(np.float32)
  # float16 storage: ~3 significant digits.
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
  # The drawn caption picks its own features.
  element = {"captions": two["captions"], "text_tokens": two["text_tokens"]}
  for seed in range(8):
    out = pipeline.ChooseCaption().random_map(
        dict(element), np.random.default_rng(seed)
    )
    i = two["captions"].index(out["caption"])
    np.testing.assert_array_equal(out["text_tokens"], two["text_tokens"][i])
  one = next(
      r
      for r in recs
      + [
          records.decode_record(data.as_data_source("val")[i])
          for i in range(data.split_size("val"))
      ]
      if r["captions"] == ["big red square"]
  )
  assert not one["text_tokens"][1].any()  # The unused slot is zeros.


def test_training_reads_the_cache_and_never_runs_the_encoder(
    setup, monkeypatch
):
  folder, enc_a, _, root = setup
  c = cached_config(folder, enc_a)
  real = text_encoder_lib.load_pretrained_text_encoder(enc_a)
  calls = []

  def spy_apply(params, ids, mask):
    calls.append([(f.filename, f.name) for f in traceback.extract_stack()])
    return real.apply(params, ids, mask)

  spied = dataclasses.replace(real, apply=spy_apply)
  monkeypatch.setattr(
      text_encoder_lib, "load_pretrained_text_encoder", lambda *a, **k: spied
  )
  seen = []
  original = run_data.train_batches

  def batches(*args, **kwargs):
    for b in original(*args, **kwargs):
      seen.append(b)
      yield b

  monkeypatch.setattr(run_data, "train_batches", batches)
  out = train.train_and_evaluate(c, str(root / "run_cached"))
  assert np.isfinite(out["train"]["train/loss"])
  assert np.isfinite(out["eval"]["val/flow"])
  assert seen and all(
      b["text_tokens"].shape == (c.batch_size, MAX_LEN, 32) for b in seen
  )
  # The sample grid encodes its prompts (they are not in the cache), so the spy is live; the
  # losses (train and validation: the objective's `loss`) never call it.
  assert calls
  in_loss = [
      s
      for s in calls
      if any(
          p.endswith(os.path.join("objectives", "crossflow.py")) and n == "loss"
          for p, n in s
      )
  ]
  assert not in_loss, "the text encoder ran inside the loss"


def test_cached_and_uncached_runs_train_alike(setup):
  """float32 cache: the first step's losses agree with the encoder run in the step.

  Every caption is kept (with cache_captions=2 the cached run would drop the third caption of
  one example and draw its captions from a shorter list). The first step is compared, on the same initial weights and batch: prepare encodes
  captions 64 at a time and the step 8 at a time, so the features differ by float32
  rounding (~1e-7 relative), and that is all that may differ. Later steps are not compared:
  Adam divides each gradient by its own running size, so rounding-level differences in
  small gradients become visible differences in the weights (measured: kl_raw 1.2% apart
  after 6 steps).
  """
  folder, enc_a, _, root = setup
  c = cached_config(folder, enc_a, total_steps=1)
  c.data.text_cache_dtype = "float32"
  c.data.cache_captions = (
      3  # Keep every caption: both runs draw from the same lists.
  )
  cached = train.train_and_evaluate(c, str(root / "run_f32"))["train"]
  c.data.cache_text = False
  uncached = train.train_and_evaluate(c, str(root / "run_uncached"))["train"]
  for key in ("train/loss", "train/flow_raw", "train/kl_raw", "train/clip_raw"):
    np.testing.assert_allclose(
        cached[key], uncached[key], rtol=1e-5, err_msg=key
    )


def test_another_encoder_never_reads_the_cache(setup):
  folder, enc_a, enc_b, _ = setup
  c_a, c_b = cached_config(folder, enc_a), cached_config(folder, enc_b)
  data_a = run_data.prepare_data(c_a, latents.build(c_a))
  # The prepared dir is named by the encoder: B prepares its own.
  data_b = run_data.prepare_data(c_b, latents.build(c_b))
  assert data_a.out_dir != data_b.out_dir
  run_lib.build_parts(c_a, data=data_a)
  with pytest.raises(ValueError, match="text features of another encoder"):
    run_lib.build_parts(c_b, data=data_a)  # Put together by hand.
  c_own = cached_config(folder, "")
  c_own.text_encoder.name = ""
  with pytest.raises(ValueError, match="trains its own text encoder"):
    run_lib.build_parts(c_own, data=data_a)
