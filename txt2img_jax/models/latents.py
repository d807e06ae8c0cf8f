"""Latent spaces, by `config.autoencoder.kind`: one registry line each.

A latent space has the interface of `models/autoencoder.PixelAutoencoder`:
  params                              its frozen weights ({} for none)
  latent_shape(image_size)            (H, W, C) of a latent
  encode_moments(params, images)      images in [0, 1] -> (mean, logvar)
  sample(moments, rng)                reparameterised draw
  decode(params, latent)              -> images in [0, 1]
  fingerprint()                       identity of the weights (for caches)
`featurizer(config, ...)` is what `prepare` caches of the frozen networks.
The weights are passed in, never closed over, so a jitted step takes them as
an argument (`frozen["latent"]`) instead of baking them in as constants.
"""

from __future__ import annotations

import json

from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.utils import paths


def _pixel(config):
  return ae_lib.PixelAutoencoder(config.autoencoder.factor)


def _pixel_shape(config):
  size, f = config.data.image_size, config.autoencoder.factor
  if f < 1 or size % f:
    raise ValueError(
        f"autoencoder.factor={f} must divide " f"data.image_size={size}"
    )
  return size // f, size // f, 3 * f * f


def _kl_vae(config):
  from txt2img_jax.models import kl_vae  # Only runs that use one load it.

  return kl_vae.load(_vae_path(config), dtype=config.dtype)


def _kl_vae_described(config):
  from txt2img_jax.models import kl_vae

  return kl_vae.describe(_vae_path(config), dtype=config.dtype)


def _kl_vae_shape(config):
  """From the VAE's config.json alone (no weights read)."""
  path = paths.join(_vae_path(config), "config.json")
  try:
    vae = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"autoencoder.path: cannot read {path} ({e}); it must be a "
        "diffusers-format AutoencoderKL folder"
    ) from e
  factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
  size = config.data.image_size
  if size % factor:
    raise ValueError(
        f"data.image_size={size} is not divisible by the VAE's "
        f"downsampling factor {factor}"
    )
  return size // factor, size // factor, int(vae.get("latent_channels", 4))


def _vae_path(config) -> str:
  path = config.autoencoder.path
  if not path:
    raise ValueError(
        "autoencoder.kind='kl_vae' needs autoencoder.path: a "
        "diffusers AutoencoderKL folder or hub id"
    )
  if paths.is_remote(path):  # Read where it is (models/kl_vae.py).
    return paths.abspath(path)
  from txt2img_jax.utils import hub  # pylint: disable=g-import-not-at-top

  return hub.model_folder(path, "autoencoder.path")


# kind -> (build(config) -> latent space, latent_shape(config) -> (H, W, C),
#          describe(config) -> the latent space with its params as shapes only)
REGISTRY = {
    "pixel": (_pixel, _pixel_shape, _pixel),
    "kl_vae": (_kl_vae, _kl_vae_shape, _kl_vae_described),
}


def _entry(config):
  kind = config.autoencoder.kind
  if kind not in REGISTRY:
    raise ValueError(
        f"autoencoder.kind={kind!r}: expected one of " f"{sorted(REGISTRY)}"
    )
  return REGISTRY[kind]


def build(config):
  return _entry(config)[0](config)


def describe(config):
  """The latent space without its weights (`params` are shapes): for
  compiling ahead of time (train/aot_lower.py)."""
  return _entry(config)[2](config)


def latent_shape(config) -> tuple[int, int, int]:
  """The image latent's (H, W, C) implied by the data and the latent space."""
  return tuple(_entry(config)[1](config))


class MomentsFeaturizer:
  """For `prepare`: the latent space's moments of each image, cached once
  so that training samples from them and never runs a frozen encoder."""

  def __init__(self, autoencoder, dtype: str = "float32"):
    import numpy as np

    from txt2img_jax.utils import local_parallel  # pylint: disable=g-import-not-at-top

    self._np = np
    self._dtype = dtype
    self._encode = local_parallel.LocalDataParallel(
        autoencoder.encode_moments, autoencoder.params
    )
    self.fingerprint = {
        "latent": autoencoder.fingerprint(),
        "moments_dtype": dtype,
    }

  def __call__(self, images_uint8, captions):
    del captions
    np = self._np
    mean, logvar = self._encode(np.asarray(images_uint8, np.float32) / 255.0)
    return {
        "moments_mean": np.asarray(mean, self._dtype),
        "moments_logvar": np.asarray(logvar, self._dtype),
    }


class Featurizers:
  """Several featurizers as one: their outputs and fingerprints merged."""

  def __init__(self, parts):
    self.parts = list(parts)
    self.fingerprint = {}
    for p in self.parts:
      self.fingerprint.update(p.fingerprint)
    caps = [p.max_captions for p in self.parts if hasattr(p, "max_captions")]
    if caps:
      self.max_captions = min(caps)

  def __call__(self, images_uint8, captions):
    out = {}
    for p in self.parts:
      out.update(p(images_uint8, captions))
    return out


def text_featurizer(config):
  """The text-feature cache of a frozen pretrained text encoder, when asked
  for (`data.cache_text`)."""
  if not config.text_encoder.name or not config.data.cache_text:
    return None
  import numpy as np
  from txt2img_jax.models import text_encoder as text_encoder_lib

  enc = text_encoder_lib.load_pretrained_text_encoder(
      config.text_encoder.name, dtype=np.dtype(config.dtype)
  )
  return text_encoder_lib.TextFeaturizer(
      enc,
      config.data.max_len,
      config.data.cache_captions,
      config.data.text_cache_dtype,
  )


def featurizer(config, autoencoder):
  """What `prepare` caches beside the images: the latent space's moments
  (with weights, `data.cache_latents`) and a frozen text encoder's token
  features (`data.cache_text`); None when neither."""
  parts = []
  if (
      autoencoder is not None
      and autoencoder.params
      and config.data.cache_latents
  ):
    parts.append(MomentsFeaturizer(autoencoder))
  text = text_featurizer(config)
  if text is not None:
    parts.append(text)
  if not parts:
    return None
  # One part keeps its own fingerprint, so data prepared before the text
  # cache existed keeps its key.
  return parts[0] if len(parts) == 1 else Featurizers(parts)
