"""A run's latent statistics: the per-channel shift and scale of the latent
space over the training images, computed once and kept in the workdir
(`latent_stats.json`)."""

from __future__ import annotations

import jax
import numpy as np

from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles

STATS_FILE = runfiles.STATS_FILE


def compute_or_load(
    config, workdir: str, builder, autoencoder
) -> ae_lib.LatentStats:
  """Per-channel shift/scale, computed once and kept with the run."""
  from txt2img_jax.data import pipeline

  if paths.exists(paths.join(workdir, STATS_FILE)):
    return load(workdir)
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


def load(workdir: str) -> ae_lib.LatentStats:
  return ae_lib.LatentStats.from_dict(runfiles.read_json(workdir, STATS_FILE))
