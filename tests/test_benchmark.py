"""Tests of the structure benchmark, including its built-in calibration."""

import dataclasses

import numpy as np
import pytest

from txt2img_jax.evaluation import benchmark
from txt2img_jax.data import shapes

NUM = 300


@pytest.fixture(scope="module")
def cal():
  return benchmark.calibrate(num=NUM, seed=0, image_size=32)


@pytest.fixture(scope="module")
def data():
  return benchmark.stack_examples(
      [shapes.example(0, "test", i) for i in range(200)]
  )


def _render_all(desc, modify, seed=0):
  """Re-renders every description after `modify(obj) -> obj`, with jitter."""
  images = []
  for i in range(len(desc["num_objects"])):
    objs = shapes.objects_from_description({k: v[i] for k, v in desc.items()})
    objs = [modify(o) for o in objs]
    jitter = np.random.default_rng([seed, i]).uniform(-1, 1, (len(objs), 2))
    images.append(shapes.render(objs, 32, jitter))
  return np.stack(images)


# --- Calibration: the four reference cases. -------------------------------


def test_calibration_renders_score_perfectly(cal):
  s = cal["render"]
  for key in (
      "color_acc",
      "shape_acc",
      "position_acc",
      "size_acc",
      "object_acc",
  ):
    assert s[key] >= 0.99, (key, s[key])
  assert s["image_acc"] >= 0.98
  assert s["mosaic"] < 0.15
  assert s["num_images"] == NUM


def test_calibration_shuffled_descriptions_near_chance(cal):
  s, chance = cal["shuffled_desc"], cal["chance"]
  assert chance["object_acc"] < 0.05
  assert s["object_acc"] < 0.05
  assert s["object_acc"] <= chance["object_acc"] + 0.02
  assert s["color_acc"] < 0.4  # ~ (objects per image) / 6 colours
  assert s["image_acc"] < 0.05


def test_calibration_pixel_shuffle_is_the_mosaic_failure(cal):
  s, render, chance = cal["pixel_shuffle"], cal["render"], cal["chance"]
  assert s["color_acc"] >= 0.9  # the colour histogram is intact ...
  # ... but shape and position fall to (or below) chance given the colour.
  assert s["shape_acc"] <= chance["shape_given_color"] + 0.05
  assert s["position_acc"] <= chance["position_given_color"] + 0.05
  assert s["object_acc"] < 0.05
  assert s["mosaic"] >= 1.0
  assert s["mosaic"] > 10 * render["mosaic"]
  assert s["fragmentation"] > 0.5
  assert s["hf"] > 1.0


def test_calibration_blur_is_not_punished(cal):
  s = cal["blur"]
  assert s["object_acc"] >= 0.9
  assert s["shape_acc"] >= 0.9
  assert s["mosaic"] < 0.15


def test_calibration_hard_edges_are_not_punished(cal):
  # A perfect drawing without anti-aliasing: the mosaic index measures
  # fragmentation, not edge sharpness (it scored 0.30 when its hf term was
  # taken on alpha-weighted colours).
  s, render = cal["hard_edges"], cal["render"]
  for key in (
      "color_acc",
      "shape_acc",
      "position_acc",
      "size_acc",
      "object_acc",
  ):
    assert s[key] >= 0.99, (key, s[key])
  assert s["mosaic"] < 0.05
  assert s["mosaic"] < render["mosaic"] + 0.02
  assert s["mosaic"] * 30 < cal["pixel_shuffle"]["mosaic"]


def test_calibration_mean_of_jittered_renders_scores_like_renders(cal):
  # The MSE-optimal image given the caption (jitter averaged out) keeps every
  # shape: a deterministic caption -> image map is not capped by the jitter.
  s = cal["jitter_mean"]
  for key in (
      "color_acc",
      "shape_acc",
      "position_acc",
      "size_acc",
      "object_acc",
  ):
    assert s[key] >= 0.99, (key, s[key])
  assert s["mosaic"] < 0.05


def test_shape_confusion_names_the_shape_drawn_instead(data):
  _, desc = data
  square, circle = shapes.SHAPES.index("square"), shapes.SHAPES.index("circle")
  swap = (
      lambda o: dataclasses.replace(o, shape=circle) if o.shape == square else o
  )
  images = _render_all(desc, swap)
  conf = benchmark.shape_confusion(benchmark.score(images, desc), desc)
  assert conf["square"]["circle"] > 0.95 and conf["square"]["square"] == 0
  for name in ("circle", "triangle"):
    assert conf[name][name] > 0.95, conf[name]
  for row in conf.values():
    assert row["objects"] > 50
    assert sum(v for k, v in row.items() if k != "objects") == pytest.approx(1)
  assert "drawn as: circle" in benchmark.format_confusion({"eval": conf})


def test_edge_sharpness_leaves_each_images_mosaic_unchanged(data):
  """The same drawings, hard-edged and anti-aliased (same jitter): image by
  image the mosaic index moves little (a pixel flipping at a small shape's
  edge moves it by up to ~0.2; another jitter of the same render moves it by
  up to ~0.1), and not on average."""
  _, desc = data
  soft = _render_all(desc, lambda o: o)
  hard = np.stack(
      [
          benchmark.render_hard_edges(
              {k: v[i : i + 1] for k, v in desc.items()},
              32,
              np.random.default_rng([0, i]),
          )[0]
          for i in range(len(soft))
      ]
  )
  m_soft = benchmark.score(soft, desc)["mosaic"]
  m_hard = benchmark.score(hard, desc)["mosaic"]
  diff = np.abs(m_hard - m_soft)
  assert np.percentile(diff, 90) < 0.1
  assert diff.mean() < 0.03
  assert m_hard.mean() < 0.05


# --- Targeted cases. -------------------------------------------------------


def test_all_black_image_scores_nothing(data):
  images, desc = data
  black = np.zeros_like(images)
  sc = benchmark.score(black, desc)
  assert not sc["color_ok"].any()
  assert not sc["object_ok"].any()
  assert not sc["image_ok"].any()
  summary = benchmark.summarize(sc)
  assert summary["object_acc"] == 0.0
  assert np.isfinite(summary["mosaic"])


def test_wrong_shape_fails_shape_only(data):
  _, desc = data
  images = _render_all(
      desc, lambda o: shapes.Obj((o.shape + 1) % 3, o.color, o.size, o.cell)
  )
  sc = benchmark.score(images, desc)
  v = sc["valid"]
  assert sc["color_ok"][v].mean() >= 0.99
  assert sc["position_ok"][v].mean() >= 0.99
  assert sc["shape_ok"][v].mean() <= 0.01
  assert not sc["object_ok"][v].any()


def test_wrong_size_fails_size_only(data):
  _, desc = data
  images = _render_all(
      desc, lambda o: shapes.Obj(o.shape, o.color, 1 - o.size, o.cell)
  )
  sc = benchmark.score(images, desc)
  v = sc["valid"]
  assert sc["size_ok"][v].mean() <= 0.01
  for key in ("color_ok", "shape_ok", "position_ok"):
    assert sc[key][v].mean() >= 0.99, key


def test_wrong_cell_fails_position_only(data):
  _, desc = data
  images = _render_all(
      desc, lambda o: shapes.Obj(o.shape, o.color, o.size, 8 - o.cell)
  )
  sc = benchmark.score(images, desc)
  v = sc["valid"] & (desc["cells"] != 4)  # the centre maps onto itself
  assert sc["position_ok"][v].mean() <= 0.01
  for key in ("color_ok", "shape_ok", "size_ok"):
    assert sc[key][v].mean() >= 0.99, key


def test_single_object_details():
  obj = shapes.Obj(shape=0, color=0, size=1, cell=2)  # large red circle
  image = shapes.render([obj], 32)
  desc = {k: v[None] for k, v in shapes.describe([obj]).items()}
  sc = benchmark.score(image[None], desc)
  assert sc["valid"].tolist() == [[True, False]]
  assert sc["object_ok"].tolist() == [[True, False]]
  assert sc["pred_shape"][0, 0] == 0 and sc["pred_size"][0, 0] == 1
  assert sc["pred_cell"][0, 0] == 2 and sc["pred_cell"][0, 1] == -1
  assert sc["num_components"][0, 0] == 1
  assert abs(sc["radius"][0, 0] - shapes.size_pixels(32)[1]) < 0.3
  assert sc["image_ok"][0]
  assert sc["mosaic"][0] < 0.05


def test_float_and_uint8_inputs_agree(data):
  images, desc = data
  a = benchmark.summarize(benchmark.score(images, desc))
  b = benchmark.summarize(
      benchmark.score(images.astype(np.float32) / 255.0, desc)
  )
  for k in a:
    assert a[k] == pytest.approx(b[k], abs=1e-4), k


def test_stray_colour_raises_mosaic(data):
  images, desc = data
  images = images.copy()
  # Paint a block of a colour no caption of this image mentions.
  for i in range(len(images)):
    unused = sorted(set(range(6)) - set(desc["colors"][i].tolist()))[0]
    images[i, :3, :3] = shapes.COLOR_RGB[unused]
  sc = benchmark.score(images, desc)
  assert sc["stray"].mean() > 0.05
  assert sc["mosaic"].mean() > benchmark.score(data[0], desc)["mosaic"].mean()


# --- API and reporting. ----------------------------------------------------


def test_score_keys_and_shapes(data):
  images, desc = data
  sc = benchmark.score(images, desc)
  n = len(images)
  for k in benchmark.PER_OBJECT_KEYS:
    assert sc[k].shape[:2] == (n, shapes.MAX_OBJECTS), k
  for k in benchmark.PER_IMAGE_KEYS:
    assert sc[k].shape == (n,), k
  assert set(benchmark.summarize(sc)) == set(benchmark.SUMMARY_KEYS)


def test_summarize_splits_and_table(data):
  images, desc = data
  sc = benchmark.score(images, desc)
  flat = benchmark.summarize_splits(
      {"eval": sc, "heldout": benchmark.summarize(sc)}
  )
  assert flat["eval/object_acc"] == flat["heldout/object_acc"]
  assert set(flat) == {
      f"{s}/{k}" for s in ("eval", "heldout") for k in benchmark.SUMMARY_KEYS
  }
  table = benchmark.format_table(flat)
  assert "eval" in table and "heldout" in table and "object_acc" in table
  assert "value" in benchmark.format_table(benchmark.summarize(sc))
