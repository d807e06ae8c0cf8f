"""Hard negatives for the contrastive term (loss.hard_negatives): the caption
edit, the pipeline's negative captions, the loss with them, the config checks
and a run from the command line."""

import collections
import json
import math
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import validate
from txt2img_jax.train import flops
from txt2img_jax.models import latents
from txt2img_jax.objectives import losses
from txt2img_jax import objectives
from txt2img_jax.data import negatives
from txt2img_jax.data import pipeline
from txt2img_jax.data import shapes
from txt2img_jax.data import tfds_shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib
import test_train

CLASSES = shapes.word_classes()
FORBIDDEN = shapes.forbidden_phrases()
WORDS = re.compile(r"[A-Za-z]+")


def _words(text):
  return WORDS.findall(text)


def test_two_objects_trade_an_attribute():
  caption = (
      "a small red circle in the top left and a large blue square at the right"
  )
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(50):
    neg = negatives.negative_caption(caption, CLASSES, rng)
    assert neg != caption
    # A swap: the same words, two of one class trading places.
    assert collections.Counter(_words(neg)) == collections.Counter(
        _words(caption)
    )
    diff = [(a, b) for a, b in zip(_words(caption), _words(neg)) if a != b]
    assert len(diff) == 2 and diff[0] == diff[1][::-1], diff
    seen.add(tuple(sorted(diff[0])))
  # Colours, shapes, sizes and the horizontal position all get swapped.
  assert seen == {
      ("blue", "red"),
      ("circle", "square"),
      ("large", "small"),
      ("left", "right"),
  }


def test_one_object_changes_one_word_within_its_class():
  caption = "in the center there is a large green triangle"
  rng = np.random.default_rng(1)
  changed = set()
  for _ in range(60):
    neg = negatives.negative_caption(caption, CLASSES, rng)
    diff = [(a, b) for a, b in zip(_words(caption), _words(neg)) if a != b]
    assert len(diff) == 1
    a, b = diff[0]
    assert any(a in g and b in g for g in CLASSES), diff
    changed.add(a)
  assert changed == {"large", "green", "triangle"}  # "center" has no partner.


def test_no_word_to_change_and_determinism():
  assert (
      negatives.negative_caption(
          "a photo of a dog", CLASSES, np.random.default_rng(0)
      )
      is None
  )
  caption = shapes.example(0, "train", 0)["caption"]
  draws = [
      negatives.negative_caption(caption, CLASSES, np.random.default_rng(5))
      for _ in range(2)
  ]
  assert draws[0] == draws[1]


def test_negatives_never_say_a_heldout_pairing():
  rng = np.random.default_rng(0)
  # A swap here would make "red triangle" or "blue circle": never drawn.
  caption = (
      "a small blue triangle at the top and a small red circle at the bottom"
  )
  for _ in range(40):
    neg = negatives.negative_caption(caption, CLASSES, rng, FORBIDDEN)
    assert not any(p in neg for p in FORBIDDEN), neg
  for i in range(300):
    caption = shapes.example(0, "train", i)["caption"]
    neg = negatives.negative_caption(caption, CLASSES, rng, FORBIDDEN)
    assert neg is not None and neg != caption
    assert not any(re.search(rf"\b{p}\b", neg) for p in FORBIDDEN), neg


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  return tfds_shapes.prepare(
      str(tmp_path_factory.mktemp("data")),
      seed=0,
      image_size=16,
      num_train=64,
      num_test=16,
      num_heldout=16,
      jitter_px=1.0,
  )


def test_pipeline_adds_negatives_and_keeps_the_rest(builder):
  tok = tokenizer_lib.build_word_tokenizer(shapes.vocabulary(), 32)
  args = dict(tokenizer=tok, max_len=32, global_batch_size=16, seed=3)
  plain = pipeline.train_dataset(builder, **args)
  with_neg = pipeline.train_dataset(
      builder,
      word_classes=builder.word_classes(),
      forbidden=builder.forbidden_phrases(),
      **args,
  )
  for step in (0, 5):
    a, b = plain[step], with_neg[step]
    assert set(b) == set(a) | {"neg_ids", "neg_mask"}
    for k in a:  # The positives are untouched.
      np.testing.assert_array_equal(a[k], b[k])
    assert b["neg_ids"].shape == b["ids"].shape
    assert b["neg_ids"].dtype == np.int32
    # Every shapes caption has something to change.
    assert np.all(np.any(b["neg_ids"] != b["ids"], axis=1))
  # A function of (seed, step), like the rest of the batch.
  again = pipeline.train_dataset(
      builder,
      word_classes=builder.word_classes(),
      forbidden=builder.forbidden_phrases(),
      **args,
  )
  np.testing.assert_array_equal(again[5]["neg_ids"], with_neg[5]["neg_ids"])


def test_contrastive_with_negatives():
  text, image = jnp.eye(3, 5), 2.0 * jnp.eye(3, 5)
  s = jnp.float32(math.log(2.0))
  base = losses.contrastive(text, image, s)
  # Invalid negatives are left out exactly.
  masked = losses.contrastive(
      text, image, s, negatives=text, negatives_valid=jnp.zeros(3, bool)
  )
  np.testing.assert_allclose(masked, base, rtol=1e-6)
  # logits = 2 I. Text rows: log(1 + 2 e^-2), unchanged.
  row_t = math.log(1 + 2 * math.exp(-2.0))
  # A negative as close to the image as its caption: each image row holds
  # its caption and its twin at e^2 and four others at e^0.
  with_neg = losses.contrastive(text, image, s, negatives=text)
  np.testing.assert_allclose(
      with_neg, 0.5 * (row_t + math.log(2 + 4 * math.exp(-2.0))), rtol=1e-5
  )
  # Negatives orthogonal to every image are three more entries at e^0.
  far = jnp.eye(3, 5, k=3)
  np.testing.assert_allclose(
      losses.contrastive(text, image, s, negatives=far),
      0.5 * (row_t + math.log(1 + 5 * math.exp(-2.0))),
      rtol=1e-5,
  )


@pytest.fixture(scope="module")
def parts():
  c = test_train.tiny_config(
      "restart", **{"loss.hard_negatives": True, "loss.clip_target": "tower"}
  )
  shape = latents.latent_shape(c)
  tok = tokenizer_lib.build_word_tokenizer(shapes.vocabulary(), c.data.max_len)
  objective = objectives.get("crossflow")
  model = run_lib.build_model(c, shape, len(tok), True)
  params = nn.unbox(
      state_lib.init_variables(
          model, c, shape, c.text_encoder.width, jax.random.PRNGKey(0)
      )
  )
  ae = latents.build(c)
  stats = ae_lib.LatentStats(
      shift=jnp.zeros(shape[-1]), scale=jnp.ones(shape[-1])
  )
  b = 4
  captions = [shapes.example(0, "train", i)["caption"] for i in range(b)]
  negs = [
      negatives.negative_caption(x, CLASSES, np.random.default_rng(i))
      for i, x in enumerate(captions)
  ]
  ids, mask = tokenizer_lib.tokenize(tok, captions, c.data.max_len)
  neg_ids, neg_mask = tokenizer_lib.tokenize(tok, negs, c.data.max_len)
  image = np.stack([shapes.example(0, "train", i)["image"] for i in range(b)])
  batch = {
      "ids": jnp.asarray(ids),
      "mask": jnp.asarray(mask),
      "image": jnp.asarray(image, jnp.float32) / 255.0,
  }
  return dict(
      config=c,
      objective=objective,
      model=model,
      params=params,
      ae=ae,
      stats=stats,
      batch=batch,
      neg={"neg_ids": jnp.asarray(neg_ids), "neg_mask": jnp.asarray(neg_mask)},
      frozen={"latent": ae.params},
  )


def _loss(p, batch):
  fn = p["objective"].make_loss(p["config"], p["model"], p["ae"], None)
  return jax.value_and_grad(fn, has_aux=True)(
      p["params"],
      batch,
      jax.random.PRNGKey(0),
      jnp.int32(0),
      p["frozen"],
      p["stats"],
  )


def test_loss_uses_the_negatives(parts):
  (total0, aux0), g0 = _loss(parts, parts["batch"])
  (total1, aux1), g1 = _loss(parts, {**parts["batch"], **parts["neg"]})
  # Only the contrastive term changes; the flow term is drawn the same.
  np.testing.assert_allclose(aux1["flow_raw"], aux0["flow_raw"], rtol=1e-6)
  assert float(aux1["clip_raw"]) > float(aux0["clip_raw"])
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g0, g1)
  assert (
      max(
          jax.tree.leaves(
              diff["text_encoder"] if "text_encoder" in diff else diff
          )
      )
      > 0
  )
  # Negatives equal to the captions are all masked out: nothing changes.
  same = {"neg_ids": parts["batch"]["ids"], "neg_mask": parts["batch"]["mask"]}
  (total2, aux2), _ = _loss(parts, {**parts["batch"], **same})
  np.testing.assert_allclose(aux2["clip_raw"], aux0["clip_raw"], rtol=1e-6)


def test_flops_count_the_negatives():
  c = test_train.tiny_config("restart")
  shape = latents.latent_shape(c)
  off = flops.by_module(flops.train_step_flops(c, shape)[1])
  c.loss.hard_negatives = True
  on = flops.by_module(flops.train_step_flops(c, shape)[1])
  assert on["flow"] == off["flow"]
  # The text side runs again on the negatives, reported as its own module.
  assert on["negatives"] == pytest.approx(
      off["text_encoder"] + off["text_head"]
  )
  assert on["contrastive"] == pytest.approx(2 * off["contrastive"])


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "--config.data.cache_text=True --config.text_encoder.name=openai/clip",
            "data.cache_text=False",
        ),
        ("--config.objective=noise_flow", "crossflow objective"),
    ],
)
def test_config_errors(override, message, tmp_path):
  cmd = [
      sys.executable,
      "-m",
      "txt2img_jax.main",
      "--config=configs/restart.py:tiny",
      f"--workdir={tmp_path / 'w'}",
      "--config.loss.hard_negatives=True",
      *override.split(),
  ]
  r = subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert r.returncode == 1, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert "error:" in last and message in last, last
  assert "Traceback" not in r.stderr


def test_clip_target_latent_contrasts_z_text_with_x1(parts):
  (_, aux_tower), g_tower = _loss(parts, parts["batch"])
  latent = dict(parts, config=parts["config"].copy_and_resolve_references())
  latent["config"].loss.clip_target = "latent"
  (_, aux_latent), g_latent = _loss(latent, parts["batch"])
  assert float(aux_latent["clip_raw"]) != float(aux_tower["clip_raw"])
  np.testing.assert_allclose(
      aux_latent["flow_raw"], aux_tower["flow_raw"], rtol=1e-6
  )
  # The tower's layers get no gradient; its temperature still does.
  tower = g_latent["image_encoder"]
  assert all(
      float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(tower["encoder"])
  )
  assert float(jnp.abs(tower["logit_scale"])) > 0
  c = latent["config"]
  assert "image_encoder" not in flops.by_module(
      flops.train_step_flops(c, latents.latent_shape(c))[1]
  )


def test_unknown_clip_target_is_a_clear_error():
  c = test_train.tiny_config("restart", **{"loss.clip_target": "pixels"})
  with pytest.raises(ValueError, match="loss.clip_target='pixels'"):
    validate.validate_config(c)


def test_a_run_with_hard_negatives_trains(tmp_path):
  """The command line end to end: the pipeline draws negatives, the step
  reads them (a tiny run of the shapes recipe, as a user types it)."""
  workdir = tmp_path / "w"
  cmd = [
      sys.executable,
      "-m",
      "txt2img_jax.main",
      "--config=configs/restart.py:tiny",
      f"--workdir={workdir}",
      "--config.loss.hard_negatives=True",
      "--config.total_steps=2",
  ]
  r = subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      timeout=600,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert r.returncode == 0, r.stderr[-3000:]
  with open(workdir / "config.json") as f:
    assert json.load(f)["loss"]["hard_negatives"] is True
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  clip = [row["train/clip_raw"] for row in rows if "train/clip_raw" in row]
  assert clip and all(math.isfinite(c) for c in clip)


def test_shape_swap_changes_one_circle_or_square():
  from experiments import binding

  assert (
      binding.shape_swap("a small red circle in the top")
      == "a small red square in the top"
  )
  # Only the first circle or square changes; a triangle before it stays.
  assert (
      binding.shape_swap(
          "a blue triangle at the left and a red square "
          "at the right, and a green circle"
      )
      == "a blue triangle at the left and a red circle at the right, "
      "and a green circle"
  )
  assert binding.shape_swap("a large cyan triangle at the center") is None
  # The words of a generated caption, not parts of other words.
  for i in range(50):
    caption = shapes.example(0, "test", i, 32)["caption"]
    swapped = binding.shape_swap(caption)
    if swapped is None:
      assert not {"circle", "square"} & set(_words(caption))
    else:
      a, b = _words(caption), _words(swapped)
      assert len(a) == len(b)
      changed = [(x, y) for x, y in zip(a, b) if x != y]
      assert changed in ([("circle", "square")], [("square", "circle")])


def test_user_word_classes_parse_or_fail_in_one_line(tmp_path):
  assert negatives.parse_word_classes("circle, square,triangle;red,blue") == (
      ("circle", "square", "triangle"),
      ("red", "blue"),
  )
  for spec, message in [
      ("circle", "needs two different words"),
      ("cat,cat", "needs two different words"),
      ("cat,dog;", "needs two different words"),
      ("cat,dog;dog,fox", "'dog' is in more than one place"),
      ("cat,big dog", "'big dog' is not a word"),
  ]:
    with pytest.raises(ValueError, match=message):
      negatives.parse_word_classes(spec)
  c = test_train.tiny_config(
      "restart",
      **{"loss.hard_negatives": True, "loss.hard_negative_words": "cat"},
  )
  with pytest.raises(ValueError, match="loss.hard_negative_words='cat'"):
    validate.validate_config(c)
  # A folder names no words of its own: the field is asked for up front.
  c = test_train.tiny_config(
      "restart",
      **{
          "loss.hard_negatives": True,
          "data.name": "folder",
          "data.path": str(tmp_path),
      },
  )
  with pytest.raises(ValueError, match="name them in loss.hard_negative_words"):
    validate.validate_config(c)


def test_pipeline_changes_only_the_named_words(builder):
  tok = tokenizer_lib.build_word_tokenizer(shapes.vocabulary(), 32)
  ds = pipeline.train_dataset(
      builder,
      tokenizer=tok,
      max_len=32,
      global_batch_size=16,
      seed=3,
      word_classes=negatives.parse_word_classes("circle,square,triangle"),
      forbidden=builder.forbidden_phrases(),
  )
  changed = 0
  for step in (0, 1, 2):
    b = ds[step]
    for ids, neg in zip(b["ids"], b["neg_ids"]):
      diff = np.flatnonzero(ids != neg)
      changed += bool(len(diff))
      for i in diff:  # Every changed token is a shape word, both sides.
        for token in (ids[i], neg[i]):
          word = tok.convert_ids_to_tokens(int(token))
          assert word in shapes.SHAPES, word
  assert changed == 48  # Every caption names a shape: all have a negative.


def test_align_term_adds_its_weight_times_the_distance(parts):
  base = dict(parts, config=parts["config"].copy_and_resolve_references())
  base["config"].loss.hard_negatives = False
  (total0, aux0), g0 = _loss(base, parts["batch"])
  on = dict(base, config=base["config"].copy_and_resolve_references())
  on["config"].loss.align_weight = 0.5
  (total1, aux1), g1 = _loss(on, parts["batch"])
  assert float(aux0["loss_align"]) == float(aux0["align_raw"]) == 0.0
  assert float(aux1["align_raw"]) > 0
  np.testing.assert_allclose(aux1["flow_raw"], aux0["flow_raw"], rtol=1e-6)
  np.testing.assert_allclose(
      float(total1 - total0), 0.5 * float(aux1["align_raw"]), rtol=1e-4
  )
  # It trains the text side only: the flow's gradient is unchanged.
  flow0, flow1 = g0["flow"], g1["flow"]
  assert all(
      np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(flow0), jax.tree.leaves(flow1))
  )
  text = jax.tree.map(
      lambda a, b: float(jnp.abs(a - b).max()), g0["text_head"], g1["text_head"]
  )
  assert max(jax.tree.leaves(text)) > 0


def test_a_folder_run_with_named_hard_negatives(tmp_path):
  """Own images: hard negatives on the words the user names."""
  import test_cli

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  test_cli.write_image_folder(str(tmp_path / "imgs"))
  base = [
      sys.executable,
      "-m",
      "txt2img_jax.main",
      "--config=configs/folder.py:tiny",
      f"--config.data.path={tmp_path / 'imgs'}",
      f"--config.data.data_dir={tmp_path / 'data'}",
      "--config.loss.hard_negatives=True",
      "--config.total_steps=2",
  ]
  r = subprocess.run(
      base
      + [
          f"--workdir={tmp_path / 'b'}",
          "--config.loss.hard_negative_words=circle,square,"
          "triangle;red,green,blue,yellow,magenta,cyan",
      ],
      capture_output=True,
      text=True,
      timeout=600,
      cwd=repo,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert any("train/clip_raw" in row for row in rows)


def test_swapped_objects_match_the_swapped_caption():
  from experiments import binding

  seen = {"color": 0, "shape": 0}
  for i in range(40):
    ex = shapes.example(0, "test", i, 32)
    objects = shapes.objects_from_description(ex)
    for swap in ("color", "shape"):
      if swap == "color":
        if len(objects) != 2:
          continue
        caption = negatives.negative_caption(
            ex["caption"], (shapes.COLOR_NAMES,), np.random.default_rng(0)
        )
      else:
        caption = binding.shape_swap(ex["caption"])
        if caption is None:
          continue
      changed = binding.swapped_objects(objects, swap)
      # The changed objects say what the changed caption says.
      assert all(shapes.object_phrase(o) in caption for o in changed)
      assert changed != objects
      seen[swap] += 1
  assert min(seen.values()) > 5
