"""Measures of z_text against the images of its captions: how much of each
caption's own image is already in z_text, in place. A leaf module: the
experiments and the prompts evaluator both report these."""

from __future__ import annotations

import numpy as np

from txt2img_jax.models import autoencoder as ae_lib

ZTEXT_KEYS = (
    "ztext/corr",
    "ztext/caption_share",
    "ztext/tile_repeat",
    "ztext/roughness",
)


def z_text_measures(
    run, mu: np.ndarray, images: np.ndarray, tile: int = 2
) -> dict[str, float]:
  """How much of each caption's own image is already in z_text, in place.

  ztext/corr: correlation, over every (example, position, channel), between
  the posterior mean and the standardised image latent, both centred per
  (position, channel) over the examples: 1 = z_text is (a scaled copy of)
  the image's deviation from the average image; 0 = no caption-specific
  layout in z_text (it is then a code the flow network must decode).
  ztext/caption_share: the share of z_text's energy that varies with the
  caption, sum((mu - mean mu)^2) / sum(mu^2): 0 = the same z_text for every
  caption.
  ztext/tile_repeat: the share of the caption-dependent part (mu - mean mu)
  that is the same in every (tile, tile) patch of the latent: 1 = the caption
  reaches every patch identically (nothing is placed), 1 / num_patches = no
  repetition beyond chance. tile = 2 is grid_query's patch (grid 8 on a
  16 x 16 latent).
  ztext/roughness: mean |neighbour difference| of mu over its mean |mu|
  (the TV penalty's quantity, scale-free).
  """
  x1 = np.asarray(
      ae_lib.standardize(
          run.autoencoder.encode_moments(run.autoencoder.params, images)[0],
          run.stats,
      )
  )
  a = mu - mu.mean(0, keepdims=True)
  b = x1 - x1.mean(0, keepdims=True)
  corr = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))
  diffs = np.concatenate(
      [np.abs(np.diff(mu, axis=1)).ravel(), np.abs(np.diff(mu, axis=2)).ravel()]
  )
  rough = float(diffs.mean() / (np.abs(mu).mean() + 1e-12))
  share = float((a * a).sum() / ((mu * mu).sum() + 1e-12))
  n, h, w, c = a.shape
  patches = a.reshape(n, h // tile, tile, w // tile, tile, c)
  repeated = patches.mean(axis=(1, 3), keepdims=True)
  num_patches = (h // tile) * (w // tile)
  repeat = float(num_patches * (repeated**2).sum() / ((a * a).sum() + 1e-12))
  return {
      "ztext/corr": corr,
      "ztext/caption_share": share,
      "ztext/tile_repeat": repeat,
      "ztext/roughness": rough,
  }
