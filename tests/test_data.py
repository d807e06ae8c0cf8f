"""Tests of the shapes TFDS builder, the grain pipeline and the tokenizer.

Everything runs on a 64/16/16-example preparation in a temporary dir.
"""

import hashlib
import itertools
import os

import numpy as np
import pytest

from txt2img_jax.data import pipeline
from txt2img_jax.data import shapes
from txt2img_jax.data import tfds_shapes
from txt2img_jax.data import tokenizer as tokenizer_lib

SIZES = dict(
    seed=0,
    image_size=16,
    num_train=64,
    num_test=16,
    num_heldout=16,
    jitter_px=1.0,
)
MAX_LEN = 32
SPLITS = ("train", "test", "heldout")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def builder(data_dir):
  return tfds_shapes.prepare(data_dir, **SIZES)


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.build_word_tokenizer(shapes.vocabulary(), MAX_LEN)


@pytest.fixture(scope="module")
def own_tok():
  """A tokenizer no pipeline holds. The pipeline tests leave iterators whose
  read threads go on tokenizing with `tok`; a call with another max_length
  changes a fast tokenizer's truncation settings, which fails with
  `RuntimeError: Already borrowed` while another thread is inside it."""
  return tokenizer_lib.build_word_tokenizer(shapes.vocabulary(), MAX_LEN)


def _train_iter(builder, tok, **kw):
  args = dict(tokenizer=tok, max_len=MAX_LEN, global_batch_size=16, seed=3)
  args.update(kw)
  return pipeline.make_train_iterator(builder, **args)


def _take(it, n):
  return list(itertools.islice(it, n))


def _digests(images):
  return [
      hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()
      for x in images
  ]


# --- The TFDS builder ------------------------------------------------------


def test_config_name_encodes_every_setting():
  names = {
      tfds_shapes.config_name(**{**SIZES, k: v})
      for k, v in [
          ("seed", 1),
          ("image_size", 32),
          ("num_train", 65),
          ("num_test", 17),
          ("num_heldout", 17),
          ("jitter_px", 0.5),
      ]
  }
  names.add(tfds_shapes.config_name(**SIZES))
  assert len(names) == 7


def test_preparation_is_deterministic_and_matches_generator(builder, tmp_path):
  other = tfds_shapes.prepare(str(tmp_path), **SIZES)
  for split in SPLITS:
    a = pipeline.load_split(builder, split)
    b = pipeline.load_split(other, split)
    assert a["caption"] == b["caption"]
    for k in ("image", "shapes", "colors", "sizes", "cells", "num_objects"):
      np.testing.assert_array_equal(a[k], b[k])
    # Record i is generator example i.
    for i in (0, len(a["caption"]) - 1):
      ex = shapes.example(
          SIZES["seed"], split, i, SIZES["image_size"], SIZES["jitter_px"]
      )
      assert a["caption"][i] == ex["caption"]
      np.testing.assert_array_equal(a["image"][i] * 255, ex["image"])
      np.testing.assert_array_equal(a["colors"][i], ex["colors"])


def test_heldout_pairings_only_in_heldout_split(builder):
  for split in SPLITS:
    data = pipeline.load_split(builder, split)
    flags = [
        shapes.is_heldout(
            shapes.objects_from_description(
                {k: data[k][i] for k in tfds_shapes.DESCRIPTION_KEYS}
            )
        )
        for i in range(len(data["caption"]))
    ]
    assert all(flags) if split == "heldout" else not any(flags), split


def test_prepare_twice_does_not_regenerate(builder, data_dir, monkeypatch):
  files = sorted(os.listdir(builder.data_dir))
  mtimes = [os.path.getmtime(os.path.join(builder.data_dir, f)) for f in files]

  def fail(*args, **kwargs):
    raise AssertionError("regenerated a prepared data set")

  monkeypatch.setattr(tfds_shapes.CaptionedShapes, "download_and_prepare", fail)
  again = tfds_shapes.prepare(data_dir, **SIZES)
  assert again.data_dir == builder.data_dir
  assert sorted(os.listdir(builder.data_dir)) == files
  assert [
      os.path.getmtime(os.path.join(builder.data_dir, f)) for f in files
  ] == mtimes


def test_runs_started_together_prepare_once(tmp_path):
  """Three processes ask for the same fresh data set at once: one writes
  it, the others wait and reuse it, and all of them read it."""
  import subprocess
  import sys

  code = (
      "import sys; from absl import logging; "
      "logging.set_verbosity(logging.INFO); "
      "from txt2img_jax.data import tfds_shapes; "
      f"b = tfds_shapes.prepare(sys.argv[1], **{SIZES!r}); "
      "tfds_shapes.verify(b); print('ok')"
  )
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo)
  procs = [
      subprocess.Popen(
          [sys.executable, "-c", code, str(tmp_path)],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for _ in range(3)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and out.strip().endswith("ok"), err[-3000:]
  logs = "".join(err for _, err in outs)
  assert logs.count("Prepared shapes data") == 1, logs[-3000:]


def test_records_finished_by_another_process_after_the_first_look(
    tmp_path, monkeypatch
):
  """The race of runs started together: this process makes its builder,
  another finishes writing the records, then this one looks. It must read
  the finished records, not a builder that saw none ("splits is empty")."""
  real = tfds_shapes.CaptionedShapes.is_prepared
  looks = []

  def is_prepared(self):
    if not looks:  # The other process finishes first.
      config = tfds_shapes.make_config(**SIZES)
      other = tfds_shapes.CaptionedShapes(
          data_dir=str(tmp_path), config=config, file_format="array_record"
      )
      other.download_and_prepare(file_format="array_record")
    looks.append(1)
    return real(self)

  monkeypatch.setattr(tfds_shapes.CaptionedShapes, "is_prepared", is_prepared)
  builder = tfds_shapes.prepare(str(tmp_path), **SIZES)
  assert set(builder.info.splits) == {"train", "test", "heldout"}
  assert len(builder.as_data_source(split="test")) == SIZES["num_test"]


def test_unwritable_data_dir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="not writable"):
    tfds_shapes.prepare(str(blocker / "data"), **SIZES)


# --- The grain pipeline ----------------------------------------------------


def test_batch_format(builder, tok):
  batch = next(_train_iter(builder, tok))
  s = SIZES["image_size"]
  expected = {
      "image": (np.float32, (16, s, s, 3)),
      "ids": (np.int32, (16, MAX_LEN)),
      "mask": (np.int32, (16, MAX_LEN)),
      "shapes": (np.int32, (16, 2)),
      "colors": (np.int32, (16, 2)),
      "sizes": (np.int32, (16, 2)),
      "cells": (np.int32, (16, 2)),
      "num_objects": (np.int32, (16,)),
  }
  assert set(batch) == set(expected)  # No captions: strings stay on host.
  for k, (dtype, shape) in expected.items():
    assert batch[k].dtype == dtype and batch[k].shape == shape, k
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].max() > 0.5
  np.testing.assert_array_equal(batch["ids"] != 0, batch["mask"] == 1)
  assert set(np.unique(batch["num_objects"])) <= {1, 2}


def test_batch_for_a_step_is_a_function_of_seed_and_step(builder, tok):
  # 4 steps per epoch: 10 steps cross two epoch boundaries.
  full = _take(_train_iter(builder, tok), 10)
  for start in (3, 7):
    resumed = _take(_train_iter(builder, tok, start_step=start), 10 - start)
    for a, b in zip(full[start:], resumed):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  random_access = pipeline.train_dataset(
      builder, tokenizer=tok, max_len=MAX_LEN, global_batch_size=16, seed=3
  )
  np.testing.assert_array_equal(random_access[9]["image"], full[9]["image"])
  other_seed = next(_train_iter(builder, tok, seed=4))
  assert not np.array_equal(other_seed["image"], full[0]["image"])


def test_a_changed_batch_size_goes_on_where_the_stream_stopped(builder, tok):
  # 3 steps of 16, then batches of 8 from example 48: the same examples in
  # the same order as the stream of one run, none skipped or seen twice.
  from txt2img_jax.train import changes

  segments = [
      {"step": 0, "examples": 0, "batch_size": 16},
      {"step": 3, "examples": 48, "batch_size": 8},
  ]
  assert changes.examples_seen(segments, 3) == 48
  assert changes.examples_seen(segments, 5) == 64
  before = _take(_train_iter(builder, tok), 3)
  after = _take(
      _train_iter(
          builder,
          tok,
          global_batch_size=8,
          start_step=3,
          start_example=changes.examples_seen(segments, 3),
      ),
      4,
  )
  stream = _take(_train_iter(builder, tok), 5)  # 80 examples.
  flat = lambda bs: _digests(np.concatenate([b["image"] for b in bs]))
  assert flat(before) + flat(after) == flat(stream)


def test_each_epoch_is_a_fresh_permutation(builder, tok):
  batches = _take(_train_iter(builder, tok), 8)
  epochs = [
      _digests(np.concatenate([b["image"] for b in batches[i : i + 4]]))
      for i in (0, 4)
  ]
  all_train = _digests(pipeline.load_split(builder, "train")["image"])
  assert len(set(all_train)) == 64
  for epoch in epochs:
    assert sorted(epoch) == sorted(all_train)
  assert epochs[0] != epochs[1]


def test_hosts_get_disjoint_shards_of_the_global_batch(builder, tok):
  one_host = _take(
      _train_iter(builder, tok, process_index=0, process_count=1), 5
  )
  hosts = [
      _take(_train_iter(builder, tok, process_index=p, process_count=2), 5)
      for p in (0, 1)
  ]
  for step in range(5):
    h0, h1 = (_digests(h[step]["image"]) for h in hosts)
    assert len(h0) == len(h1) == 8
    assert not set(h0) & set(h1)
    assert sorted(h0 + h1) == sorted(_digests(one_host[step]["image"]))


def test_subset_size_restricts_to_first_records(builder, tok):
  first = set(_digests(pipeline.load_split(builder, "train", 32)["image"]))
  batches = _take(_train_iter(builder, tok, subset_size=32), 4)
  seen = set(_digests(np.concatenate([b["image"] for b in batches])))
  assert seen == first


def test_clear_errors(builder, tok):
  with pytest.raises(ValueError, match="multiple of the process count"):
    _train_iter(
        builder, tok, global_batch_size=15, process_index=0, process_count=2
    )
  with pytest.raises(ValueError, match="fewer than the global batch"):
    _train_iter(builder, tok, global_batch_size=128)
  with pytest.raises(ValueError, match="fewer than the global batch"):
    _train_iter(builder, tok, subset_size=8)
  with pytest.raises(ValueError, match="subset_size"):
    _train_iter(builder, tok, subset_size=1000)


def test_load_split(builder, tok):
  data = pipeline.load_split(builder, "test", 5, tokenizer=tok, max_len=MAX_LEN)
  assert isinstance(data["caption"], list) and len(data["caption"]) == 5
  assert data["image"].shape == (5, 16, 16, 3)
  assert data["image"].dtype == np.float32
  np.testing.assert_array_equal(data["index"], np.arange(5))
  ids, mask = tokenizer_lib.tokenize(tok, data["caption"], MAX_LEN)
  np.testing.assert_array_equal(data["ids"], ids)
  np.testing.assert_array_equal(data["mask"], mask)
  again = pipeline.load_split(builder, "test", 5)
  np.testing.assert_array_equal(again["image"], data["image"])


# --- The tokenizer ---------------------------------------------------------


def test_tokenizer_behaves_like_a_transformers_tokenizer(own_tok):
  out = own_tok(
      ["A small red circle in the TOP left", "cat"],
      padding="max_length",
      truncation=True,
      max_length=12,
      return_tensors="np",
  )
  assert set(out) == {"input_ids", "attention_mask"}
  assert out["input_ids"].shape == (2, 12)
  words = own_tok.convert_ids_to_tokens(out["input_ids"][0].tolist())
  assert words[:10] == [
      "[BOS]",
      "a",
      "small",
      "red",
      "circle",
      "in",
      "the",
      "top",
      "left",
      "[EOS]",
  ]
  assert words[10:] == ["[PAD]", "[PAD]"]
  assert own_tok.pad_token_id == 0
  assert out["input_ids"][1, 1] == own_tok.unk_token_id


def test_long_caption_is_truncated(own_tok):
  long = " and ".join(["a small red circle in the top left"] * 10)
  ids, mask = tokenizer_lib.tokenize(own_tok, [long, "a red square"], 8)
  assert ids.shape == mask.shape == (2, 8)
  assert ids.dtype == mask.dtype == np.int32
  assert mask[0].all() and ids[0, -1] == own_tok.eos_token_id
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 1, 1, 0, 0, 0])


def test_vocabulary_covers_generated_captions(own_tok):
  # Captions do not depend on the image size; a tiny one renders fast.
  captions = [
      shapes.example(0, split, i, image_size=3)["caption"]
      for split in SPLITS
      for i in range(5000 // 3 + 1)
  ]
  ids, mask = tokenizer_lib.tokenize(own_tok, captions, MAX_LEN)
  assert not (ids == own_tok.unk_token_id).any()
  assert mask[:, -1].sum() == 0  # MAX_LEN never truncates a shapes caption.
  punctuated = tokenizer_lib.tokenize(own_tok, ["left, and right"], 8)[0][0]
  assert own_tok.convert_ids_to_tokens(punctuated[1:5].tolist()) == [
      "left",
      ",",
      "and",
      "right",
  ]
