"""A run's input: the configured data set prepared once per data dir (on
every host of a pod), and the stream of training batches read from it.

The input pipeline (grain) is imported only by the functions that read data,
so that rebuilding a model (`perf`, `sample`) needs no data-side packages.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from txt2img_jax.data import sources
from txt2img_jax.models import latents
from txt2img_jax.utils import multihost


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
    text,
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
