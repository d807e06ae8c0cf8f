"""The built-in shapes data and the same examples written out as a user's
image folder give the same training.

The folder holds shapes.example(0, "train", i) for i < N as PNGs, with one
caption each in metadata.jsonl, plus a few examples of the shapes `test`
split for the folder's held-out `val` split. Their file names are picked so
that `data.val_count` holds out exactly those (val takes the lowest key
hashes), so the folder's train split is the shapes train split, record for
record, and no test needs a tolerance: everything here is compared exactly.

What differs by design, and how the run is made to agree:
- the word vocabulary: the shapes set's is every word of its grammar, sorted;
  a folder's is the words of its train captions, most frequent first, so
  the same word gets another id and another embedding row. The folder run is
  given the shapes vocabulary the way every run keeps its own: in the
  workdir's vocab file.
- the configs (restart.py:tiny vs folder.py:tiny): the fields that shape the
  model, data and optimiser are set equal; the test checks that what is
  left differing is only the data source and its evaluator.
"""

import importlib
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import run_data
from txt2img_jax.train import text_side
from txt2img_jax.train import latent_stats
from txt2img_jax.models import latents
from txt2img_jax.utils import runfiles
from txt2img_jax.train import sharding
from txt2img_jax.train import step as step_lib
from txt2img_jax.data import inputs
from txt2img_jax.data import records
from txt2img_jax.data import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_VAL, SIZE, STEPS = 32, 4, 16, 3

# Fields allowed to differ between the two runs: which data, where, how its
# val split is held out, and how it is evaluated (not run here).
SOURCE_FIELDS = {
    "name",
    "data.name",
    "data.path",
    "data.val_count",
    "data.val_fraction",
    "data.cache_text",
    "eval.kind",
    "eval.num",
    "eval.batch_size",
}


def recipe(name):
  return importlib.import_module(f"configs.{name}").get_config("tiny")


def flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def val_name(j: int, below: float) -> str:
  """A file name for val image j whose key hash is below every train key's."""
  t = 0
  while inputs.key_unit(f"val_{j}_{t}.png") >= below:
    t += 1
  return f"val_{j}_{t}.png"


def write_shapes_folder(root: str) -> list[str]:
  """The shapes train examples 0..N-1 (+ NUM_VAL test ones) as a folder;
  returns the val file names."""
  os.makedirs(root)
  train = [f"{i:03d}.png" for i in range(NUM_TRAIN)]
  lowest = min(inputs.key_unit(n) for n in train)
  val = [val_name(j, lowest) for j in range(NUM_VAL)]
  rows = [(n, shapes.example(0, "train", i, SIZE)) for i, n in enumerate(train)]
  rows += [(n, shapes.example(0, "test", j, SIZE)) for j, n in enumerate(val)]
  with open(os.path.join(root, "metadata.jsonl"), "w") as f:
    for name, ex in rows:
      Image.fromarray(ex["image"]).save(os.path.join(root, name))
      f.write(json.dumps({"file_name": name, "text": ex["caption"]}) + "\n")
  return val


@pytest.fixture(scope="module")
def configs(tmp_path_factory, data_dir):
  folder_dir = str(tmp_path_factory.mktemp("own") / "my_shapes")
  val = write_shapes_folder(folder_dir)
  s, f = recipe("restart"), recipe("folder")
  for c in (s, f):
    # Every field that shapes the model, the data or the optimiser: one value.
    c.data.image_size = SIZE
    c.autoencoder.factor = 2
    c.data.max_len = 24
    c.data.num_train = NUM_TRAIN
    c.autoencoder.stats_examples = NUM_TRAIN
    c.total_steps = STEPS
    c.optim.schedule.update(warmup_steps=1, t0=STEPS - 1)
    c.data.data_dir = data_dir
    c.data.prepare_workers = 1  # Two cores, shared: threads only add noise.
  # folder.py's levers for real images (its docstring): the shapes run
  # takes them too, so the runs still differ only in their data.
  s.flow.out_head = f.flow.out_head
  s.time.sampler = f.time.sampler
  s.flow.predict = f.flow.predict
  f.data.path = folder_dir
  f.data.val_count = NUM_VAL
  fs, ff = flat(s.to_dict()), flat(f.to_dict())
  differ = {k for k in fs.keys() | ff.keys() if fs.get(k) != ff.get(k)}
  assert differ <= SOURCE_FIELDS, differ - SOURCE_FIELDS
  assert f.text_encoder.name == "", "cache_text only acts with an encoder"
  return s, f, val


def test_folder_decodes_the_shapes_examples_bit_identically(configs):
  s_cfg, f_cfg, val = configs
  s_data, f_data = run_data.prepare_data(s_cfg), run_data.prepare_data(f_cfg)
  assert f_data.report["written"] == {"train": NUM_TRAIN, "val": NUM_VAL}
  assert f_data.report["reasons"] == {}
  s_src, f_src = (d.as_data_source("train") for d in (s_data, f_data))
  assert len(s_src) == len(f_src) == NUM_TRAIN
  s_dec, f_dec = s_data.decode_transform(), f_data.decode_transform()
  for i in range(NUM_TRAIN):
    assert records.decode_record(f_src[i])["index"] == i  # Metadata row i.
    a, b = s_dec.map(s_src[i]), f_dec.map(f_src[i])
    assert a["image"].dtype == b["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])
    assert b["captions"] == [a["caption"]]
  val_src = f_data.as_data_source("val")
  keys = sorted(
      records.read_record(val_src[j])["key"] for j in range(len(val_src))
  )
  assert keys == sorted(val)


def run_inputs(config, workdir):
  """What train.train_and_evaluate builds before the model: data, parts
  (vocabulary, tokenizer, model) and the latent statistics."""
  os.makedirs(workdir, exist_ok=True)
  autoencoder = latents.build(config)
  data = run_data.prepare_data(config, autoencoder)
  parts = run_lib.build_parts(config, workdir, data, autoencoder)
  return (
      data,
      parts,
      latent_stats.compute_or_load(config, workdir, data, autoencoder),
  )


def test_short_run_gives_the_same_losses(configs, tmp_path):
  """Both paths as train.py runs them, for STEPS steps: the same batches,
  statistics, program and losses.

  Compiling is most of the CPU time of a run this short (the first step
  took 77 of ~140 s wall here, under load), so the step is compiled once: the
  folder run's own step (built from its own config and parts) is checked to
  lower to the same program text as the shapes run's, and then runs on that
  one compiled copy from the same initial state (equal configs and models
  make the same init; only the model fields decide it).
  """
  s_cfg, f_cfg, _ = configs
  s_dir, f_dir = str(tmp_path / "shapes"), str(tmp_path / "folder")
  os.makedirs(f_dir)
  f_data = run_data.prepare_data(f_cfg)
  # By design the folder's own vocabulary is another one (see the doc).
  assert f_data.vocabulary() != shapes.vocabulary()
  assert set(f_data.vocabulary()) <= set(shapes.vocabulary())
  runfiles.write_json(f_dir, text_side.VOCAB_FILE, shapes.vocabulary())
  s_data, s_parts, s_stats = run_inputs(s_cfg, s_dir)
  f_data, f_parts, f_stats = run_inputs(f_cfg, f_dir)
  assert f_parts.text.vocab_size == s_parts.text.vocab_size
  assert f_parts.latent_shape == s_parts.latent_shape
  assert f_parts.model == s_parts.model
  np.testing.assert_array_equal(s_stats.shift, f_stats.shift)
  np.testing.assert_array_equal(s_stats.scale, f_stats.scale)

  mesh = sharding.make_mesh(s_cfg.mesh.data, s_cfg.mesh.model)
  rules = sharding.logical_rules(s_cfg.mesh.rules)
  tx, schedules, state, shardings = state_lib.create_train_state(
      s_cfg,
      s_parts.model,
      s_parts.latent_shape,
      s_parts.text.width,
      mesh,
      rules,
  )
  initial = jax.device_get(state)
  repl = sharding.replicated(mesh)
  runs = {}
  for name, cfg, data, parts, stats in (
      ("shapes", s_cfg, s_data, s_parts, s_stats),
      ("folder", f_cfg, f_data, f_parts, f_stats),
  ):
    step = state_lib.jit_train_step(
        step_lib.for_parts(cfg, parts, tx, schedules), shardings, mesh
    )
    batches = run_data.train_batches(cfg, data, parts.text, 0)
    frozen = jax.device_put(parts.frozen, repl)
    runs[name] = dict(
        step=step,
        fed=[next(batches) for _ in range(STEPS)],
        frozen=frozen,
        stats=jax.device_put(stats, repl),
    )
  s, f = runs["shapes"], runs["folder"]
  for a, b in zip(s["fed"], f["fed"]):
    assert sorted(a) == sorted(b) == ["ids", "image", "mask"]
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  with mesh:
    lowered = [
        r["step"]
        .lower(
            state,
            sharding.put_batch(r["fed"][0], mesh),
            r["frozen"],
            r["stats"],
        )
        .as_text()
        for r in (s, f)
    ]
    assert lowered[0] == lowered[1]
    losses = {}
    for name, r in runs.items():
      state = jax.device_put(initial, shardings)
      losses[name] = []
      for batch in r["fed"]:
        state, m = s["step"](
            state, sharding.put_batch(batch, mesh), r["frozen"], r["stats"]
        )
        losses[name].append(jax.device_get(m))
  for a, b in zip(losses["shapes"], losses["folder"]):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  first, last = losses["shapes"][0]["loss"], losses["shapes"][-1]["loss"]
  assert np.isfinite(first) and first != last  # It trained.
