"""The seams: a new data source, latent space or objective is one module plus
one registry line (docs/architecture.md shows the data source below)."""

import json
import os

import grain
import numpy as np
import pytest

from txt2img_jax.models import latents
from txt2img_jax import objectives
from txt2img_jax.train import loop as train
from txt2img_jax.data import sources
from txt2img_jax.data import tokenizer as tokenizer_lib
import test_train

COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}


# --- The whole "solid colours" data source (the docs' worked example). ---
class SolidColours:
  EVAL_SPLITS = {"val": "val"}
  DEFAULT_EVALUATOR = "prompts"

  def __init__(self, size: int):
    self.size = size
    self.splits = {"train": 64, "val": 8}

  def as_data_source(self, split):
    names = list(COLOURS)
    return [names[i % len(names)] for i in range(self.splits[split])]

  def decode_transform(self):
    size = self.size

    class Decode(grain.transforms.Map):

      def map(self, name):
        image = np.ones((size, size, 3), np.float32) * COLOURS[name]
        return {"image": image, "caption": f"a {name} image"}

    return Decode()

  def vocabulary(self):
    return ["a", "image"] + list(COLOURS)

  def split_size(self, split):
    return self.splits[split]


def prepare_solid(config, featurizer=None):
  del featurizer
  return SolidColours(config.data.image_size)


# --- end of the example. ---


@pytest.fixture
def solid_registered(monkeypatch):
  monkeypatch.setitem(sources.REGISTRY, "solid", prepare_solid)


def test_a_new_data_source_trains_and_evaluates(solid_registered, tmp_path):
  c = test_train.tiny_config(total_steps=2)
  c.data.name = "solid"
  c.data.image_size = 8
  c.eval.kind = "prompts"
  c.eval.num = 8
  c.eval.batch_size = 8
  out = train.train_and_evaluate(c, str(tmp_path))
  assert np.isfinite(out["train"]["train/loss"])
  assert "val/flow" in out["eval"]
  assert os.path.exists(tmp_path / "samples" / "latest.png")
  with open(tmp_path / "vocab.json") as f:
    assert json.load(f) == SolidColours(8).vocabulary()


def test_unknown_names_are_one_clear_error():
  c = test_train.tiny_config()
  for field, value, registry in (
      ("data.name", "nope", sources.REGISTRY),
      ("autoencoder.kind", "nope", latents.REGISTRY),
  ):
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=sorted(registry)[0]):
      (sources.prepare(c) if section == "data" else latents.latent_shape(c))
    c = test_train.tiny_config()
  with pytest.raises(ValueError, match="crossflow"):
    objectives.get("nope")


def test_word_vocabulary_of_prepared_data_matches_the_tokenizer_split():
  from txt2img_jax.data import prepared

  words = prepared._WORDS.findall("a red-ish circle, left!")
  tok = tokenizer_lib.build_word_tokenizer(sorted(set(words)), 16)
  ids, _ = tokenizer_lib.tokenize(tok, ["a red-ish circle, left!"], 16)
  assert tok.unk_token_id not in ids[0]


def test_a_run_saved_before_a_field_existed_loads_with_its_default(tmp_path):
  from txt2img_jax.train import run_config

  c = test_train.tiny_config()
  d = c.to_dict()
  del d["loss"]["kl_kind"], d["objective"]
  with open(tmp_path / "config.json", "w") as f:
    json.dump(d, f)
  loaded = run_config.load(str(tmp_path))
  assert loaded.loss.kl_kind == "gaussian"
  assert loaded.objective == "crossflow"
  assert loaded.total_steps == c.total_steps


def _package_imports():
  """{module: modules of the package it imports anywhere in its file}."""
  import ast

  root = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "txt2img_jax"
  )
  graph = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, os.path.dirname(root))[:-3]
      module = rel.replace(os.sep, ".").removesuffix(".__init__")
      deps = set()
      for node in ast.walk(ast.parse(open(path).read())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and (node.module.startswith("txt2img_jax"))
        ):
          for alias in node.names:
            deps.add(f"{node.module}.{alias.name}")
            deps.add(node.module)
        elif isinstance(node, ast.Import):
          deps.update(
              a.name for a in node.names if a.name.startswith("txt2img_jax")
          )
      graph[module] = deps
  return {
      m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()
  }


def test_no_import_circle():
  graph = _package_imports()
  # A package's __init__ importing its own modules is not a loop.
  for m in list(graph):
    graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
  state, path = {}, []

  def visit(m):
    state[m] = "open"
    path.append(m)
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        raise AssertionError(" -> ".join(path[path.index(d) :] + [d]))
      if d not in state:
        visit(d)
    path.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_resume_with_another_model_is_an_error_that_keeps_the_run(
    tmp_path, data_dir
):
  del data_dir
  workdir = str(tmp_path)
  train.train_and_evaluate(test_train.tiny_config(total_steps=2), workdir)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  config_before = (tmp_path / "config.json").read_text()
  changed = test_train.tiny_config(total_steps=4)
  changed.head.kind = "mlp_conv"
  with pytest.raises(ValueError, match="changes what the run is \\(head.kind"):
    train.train_and_evaluate(changed, workdir)
  assert (tmp_path / "config.json").read_text() == config_before
  # Allowed by name, the checkpoint's arrays still do not fit this model.
  changed.allow_changed = "head"
  with pytest.raises(ValueError, match="holds another model"):
    train.train_and_evaluate(changed, workdir)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before
  assert not os.path.exists(tmp_path / "checkpoints_broken")
  assert (tmp_path / "config.json").read_text() == config_before
