"""Image <-> latent: the embedded parameter-free pixel autoencoder, and per-channel latent
standardisation shared by training and evaluation."""

import dataclasses
import math
from typing import Dict, Iterable, List, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

Moments = Tuple[jax.Array, jax.Array]


def space_to_depth(x: jax.Array, f: int) -> jax.Array:
  b, h, w, c = x.shape
  x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // f, w // f, f * f * c)


def depth_to_space(x: jax.Array, f: int) -> jax.Array:
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, f, f, c // (f * f)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * f, w * f, c // (f * f))


@dataclasses.dataclass(frozen=True)
class PixelAutoencoder:
  """Fixed autoencoder: pixels in [0, 1] -> [-1, 1] -> space-to-depth by `factor`.

  It has the interface of every latent space (see `txt2img_jax/latents.py`):
  moments, reparameterised sample, decode, with the frozen weights passed in
  (`params`, empty here), so training exercises the same encode_moments +
  sample path as a run on a KL-VAE. `logvar` is a constant: log(1e-6), i.e.
  a std of 1e-3 in [-1, 1] units = 5e-4 in [0, 1] units, about 1/8 of an
  8-bit level, so a decoded sample reconstructs the input within 1/255 with
  overwhelming probability (a 1/255 error would be a ~7.8-sigma draw).
  """

  factor: int
  logvar: float = math.log(1e-6)

  @property
  def params(self) -> Dict:
    return {}

  def fingerprint(self) -> str:
    return f"pixel-f{self.factor}"

  def latent_shape(self, image_size: int) -> Tuple[int, int, int]:
    if image_size % self.factor:
      raise ValueError(
          f"image size {image_size} is not divisible by factor {self.factor}"
      )
    side = image_size // self.factor
    return (side, side, 3 * self.factor**2)

  def encode_moments(self, params, images: jax.Array) -> Moments:
    del params
    mean = space_to_depth(
        jnp.asarray(images, jnp.float32) * 2.0 - 1.0, self.factor
    )
    return mean, jnp.full_like(mean, self.logvar)

  def sample(self, moments: Moments, rng: jax.Array) -> jax.Array:
    mean, logvar = moments
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(
        rng, mean.shape, mean.dtype
    )

  def decode(self, params, latent: jax.Array) -> jax.Array:
    del params
    images = (
        depth_to_space(latent.astype(jnp.float32), self.factor) + 1.0
    ) / 2.0
    return jnp.clip(images, 0.0, 1.0)


@flax.struct.dataclass
class LatentStats:
  """Per-channel shift (mean) and scale (std) of the sampled latent; a pytree, jit-friendly."""

  shift: jax.Array
  scale: jax.Array

  def to_dict(self) -> Dict[str, List[float]]:
    return {
        "shift": np.asarray(self.shift).tolist(),
        "scale": np.asarray(self.scale).tolist(),
    }

  @classmethod
  def from_dict(cls, d: Dict[str, List[float]]) -> "LatentStats":
    return cls(
        shift=np.asarray(d["shift"], np.float32),
        scale=np.asarray(d["scale"], np.float32),
    )


def compute_latent_stats(
    autoencoder,
    images_batches: Iterable[np.ndarray],
    rng: jax.Array,
    min_std: float = 1e-4,
) -> LatentStats:
  """Per-channel mean / std over every pixel of every example of sample(encode_moments(x)).

  A batch may also be a (mean, logvar) pair of moments cached by `prepare`.

  Uses the training path (moments + reparameterised sample) so the statistics describe exactly
  what the flow network sees. `min_std` keeps a constant channel from dividing by ~0.
  """
  encode = jax.jit(lambda p, x, key: encode_latent(autoencoder, p, x, key))
  from_moments = jax.jit(lambda m, key: sample_latent(autoencoder, m, key))
  total = total_sq = None
  count = 0
  for i, images in enumerate(images_batches):
    key = jax.random.fold_in(rng, i)
    if isinstance(images, tuple):  # Moments cached by `prepare`.
      latent = np.asarray(from_moments(images, key), np.float64)
    else:
      latent = np.asarray(
          encode(autoencoder.params, jnp.asarray(images), key), np.float64
      )
    flat = latent.reshape(-1, latent.shape[-1])
    total = flat.sum(0) if total is None else total + flat.sum(0)
    total_sq = (
        (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
    )
    count += flat.shape[0]
  if not count:
    raise ValueError("compute_latent_stats got no images")
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return LatentStats(
      shift=mean.astype(np.float32),
      scale=np.maximum(std, min_std).astype(np.float32),
  )


def encode_latent(
    autoencoder,
    params,
    images: jax.Array,
    rng: jax.Array,
    stats: LatentStats | None = None,
) -> jax.Array:
  """The one image -> latent path: moments, reparameterised sample, then
  (with stats) per-channel standardisation. The train step, the latent
  statistics and the health check all call this, so they cannot drift apart
  (the note's "VAE consistency")."""
  return sample_latent(
      autoencoder, autoencoder.encode_moments(params, images), rng, stats
  )


def sample_latent(
    autoencoder,
    moments: Moments,
    rng: jax.Array,
    stats: LatentStats | None = None,
) -> jax.Array:
  """The second half of encode_latent, for moments cached on disk."""
  latent = autoencoder.sample(moments, rng)
  return latent if stats is None else standardize(latent, stats)


def decode_latent(
    autoencoder, params, latent: jax.Array, stats: LatentStats
) -> jax.Array:
  """The inverse path used by the sampler: un-standardise, then decode."""
  return autoencoder.decode(params, unstandardize(latent, stats))


def standardize(latent: jax.Array, stats: LatentStats) -> jax.Array:
  return (latent - stats.shift) / stats.scale


def unstandardize(latent: jax.Array, stats: LatentStats) -> jax.Array:
  return latent * stats.scale + stats.shift
