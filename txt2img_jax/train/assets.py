"""What a run needs besides its weights, and what it keeps in its workdir.

Data (prepared once per data dir), the tokenizer and text encoder, the
latent statistics, and the run's config: sample.py and evaluate.py rebuild the
exact model of a run from its workdir alone.

The input pipeline (grain) is imported only by the functions that read data,
so that rebuilding a model (`perf`, `sample`) needs no data-side packages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from txt2img_jax.models import latents
from txt2img_jax.utils import multihost
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.data import shapes
from txt2img_jax.data import sources
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import text_encoder as text_encoder_lib

# The run's files and their reading/writing live in runfiles.py.
CONFIG_FILE = runfiles.CONFIG_FILE
STATS_FILE = runfiles.STATS_FILE
VOCAB_FILE = runfiles.VOCAB_FILE


# --- Config ------------------------------------------------------------------


def save_config(
    config: ml_collections.ConfigDict, workdir: str, latent_shape
) -> None:
  d = config.to_dict()
  d["latent_dims"] = int(np.prod(latent_shape))  # Read by diagnose.
  if jax.process_index() == 0:
    runfiles.write_json(
        workdir, CONFIG_FILE, d, indent=2, sort_keys=True, default=str
    )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  d = runfiles.read_json(workdir, CONFIG_FILE)
  d.pop("latent_dims", None)
  return ml_collections.ConfigDict(_with_defaults(d, _base_defaults()))


def _base_defaults() -> dict:
  """Every field's default (configs/base.py): a run saved before a field
  existed gets the default, which is the behaviour it was trained with."""
  from configs import base  # pylint: disable=g-import-not-at-top

  return base.get_config().to_dict()


def _with_defaults(saved: dict, defaults: dict) -> dict:
  out = dict(saved)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif (
        isinstance(v, dict)
        and isinstance(out[k], dict)
        and k not in ("sampler", "schedule", "then", "first")
    ):  # Kind-specific blocks.
      out[k] = _with_defaults(out[k], v)
  return out


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      name = f"{prefix}{k}"
      if isinstance(v, dict):
        walk(name + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        out[name] = v

  walk("", config.to_dict())
  return out


# --- Data --------------------------------------------------------------------


def prepare_data(config: ml_collections.ConfigDict, autoencoder=None):
  """The configured data set (`data/sources.py`), prepared once; with a
  latent space that has weights, its moments are cached with the images
  when `data.cache_latents` is set.

  On several processes a user's data (folder, TFDS, web-dataset shards) is
  prepared by all of them together, each its share of the chunks, the
  frozen encoders on its own devices (`records_prepare`); the built-in sets
  by process 0 first, the others then finding them ready.
  """
  featurizer = (
      latents.featurizer(config, autoencoder)
      if autoencoder is not None
      else None
  )
  if jax.process_count() == 1:
    return sources.prepare(config, featurizer)
  if sources.every_host_prepares(config):
    from txt2img_jax.data import records_hosts

    hosts = records_hosts.Hosts(
        jax.process_index(),
        jax.process_count(),
        multihost.sync,
        multihost.gather_int,
    )
    return sources.prepare(config, featurizer, hosts)
  with multihost.main_process_first("prepare_data"):  # A shared data dir.
    return sources.prepare(config, featurizer)


def train_batches(
    config,
    builder,
    text: "TextSide",
    start_step: int,
    *,
    start_example: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  from txt2img_jax.data import pipeline

  d = config.data
  word_classes, forbidden = None, ()
  if config.loss.hard_negatives:
    from txt2img_jax.data import negatives

    spec = config.loss.hard_negative_words
    if spec:
      word_classes = negatives.parse_word_classes(spec)
    elif hasattr(builder, "word_classes"):
      word_classes = builder.word_classes()
    else:  # A data source of the user's (built-in ones fail validation).
      raise negatives.words_not_named(d.name)
    forbidden = getattr(builder, "forbidden_phrases", tuple)()
  it = pipeline.make_train_iterator(
      builder,
      tokenizer=text.tokenizer,
      max_len=d.max_len,
      global_batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      subset_size=d.subset_size or None,
      read_threads=d.read_threads,
      prefetch_batches=d.prefetch,
      worker_count=d.worker_count,
      word_classes=word_classes,
      forbidden=forbidden,
      start_example=start_example,
  )
  # What the train step reads: cached latent moments replace the image,
  # cached text features (`text_tokens`) the frozen text encoder; hard
  # negatives (`neg_ids`, `neg_mask`) when loss.hard_negatives is on.
  keys = (
      "ids",
      "mask",
      "moments_mean",
      "moments_logvar",
      "text_tokens",
      "neg_ids",
      "neg_mask",
  )

  def pick(b):
    out = {k: b[k] for k in keys if k in b}
    if "moments_mean" not in out:
      out["image"] = b["image"]
    return out

  return (pick(b) for b in it)


# --- Text side ---------------------------------------------------------------


@dataclasses.dataclass
class TextSide:
  """The tokenizer and, for a pretrained encoder, its frozen weights."""

  tokenizer: Any
  vocab_size: int
  width: int
  frozen: text_encoder_lib.PretrainedTextEncoder | None
  frozen_params: Any


def load_text(
    config: ml_collections.ConfigDict, workdir: str | None, data=None
) -> TextSide:
  """The text side of a run. The embedded encoder's word vocabulary comes
  from the data and is kept in the workdir (VOCAB_FILE), so a trained run
  rebuilds without its data; runs made before that file are shapes runs."""
  name = config.text_encoder.name
  if not name:
    tok = tokenizer_lib.build_word_tokenizer(
        vocabulary(config, workdir, data), config.data.max_len
    )
    return TextSide(tok, len(tok), config.text_encoder.width, None, {})
  enc = text_encoder_lib.load_pretrained_text_encoder(
      name, dtype=np.dtype(config.dtype)
  )
  logging.info("frozen text encoder %s: width %d", name, enc.width)
  return TextSide(enc.tokenizer, len(enc.tokenizer), enc.width, enc, enc.params)


def vocabulary(config, workdir: str | None, data=None) -> list[str]:
  path = paths.join(workdir, VOCAB_FILE) if workdir else None
  if path and paths.exists(path):
    return runfiles.read_json(workdir, VOCAB_FILE)
  if data is not None:
    words = list(data.vocabulary())
  elif config.data.name == "shapes":
    words = shapes.vocabulary()
  else:
    raise FileNotFoundError(
        f"{path or 'no workdir'}: the run's word vocabulary is missing"
    )
  if path and jax.process_index() == 0:
    runfiles.write_json(workdir, VOCAB_FILE, words)
  return words


# --- Latent statistics -------------------------------------------------------


def latent_stats(
    config, workdir: str, builder, autoencoder
) -> ae_lib.LatentStats:
  """Per-channel shift/scale, computed once and kept with the run."""
  from txt2img_jax.data import pipeline

  if paths.exists(paths.join(workdir, STATS_FILE)):
    return load_latent_stats(workdir)
  n = min(config.autoencoder.stats_examples, builder.split_size("train"))
  split = pipeline.load_split(builder, "train", n, max_len=config.data.max_len)
  chunks = max(1, n // 256)
  if "moments_mean" in split:  # Cached: the frozen encoder need not run.
    batches = list(
        zip(
            np.array_split(split["moments_mean"], chunks),
            np.array_split(split["moments_logvar"], chunks),
        )
    )
  else:
    batches = np.array_split(split["image"], chunks)
  stats = ae_lib.compute_latent_stats(
      autoencoder, batches, jax.random.PRNGKey(config.seed + 1)
  )
  if jax.process_index() == 0:
    runfiles.write_json(workdir, STATS_FILE, stats.to_dict())
  return stats


def load_latent_stats(workdir: str) -> ae_lib.LatentStats:
  return ae_lib.LatentStats.from_dict(runfiles.read_json(workdir, STATS_FILE))
