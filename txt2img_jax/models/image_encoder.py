"""The contrastive image tower: image latent (B, H, W, C) -> projection (B, out_dim)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import layers

Dtype = Any


class ImageEncoder(nn.Module):
  """3x3 stem, `depth` stride-2 3x3 conv + LayerNorm + GELU stages, global mean pool, dense.

  Kept small on purpose: it only has to give the contrastive loss an image embedding to align
  z_text with, not to be a strong vision model. Output in float32.
  """

  out_dim: int
  width: int
  depth: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # The stem's input side is the latent channel count (e.g. 4): too small to shard.
    x = layers.conv(
        self.width, (3, 3), (None, None, None, "conv_out"), name="stem", **kw
    )(x.astype(self.dtype))
    for i in range(self.depth):
      x = nn.gelu(nn.LayerNorm(name=f"ln_{i}", **kw)(x))
      x = layers.conv(
          self.width,
          (3, 3),
          (None, None, "conv_in", "conv_out"),
          strides=2,
          name=f"down_{i}",
          **kw,
      )(x)
    x = nn.LayerNorm(name="ln_final", **kw)(jnp.mean(x, axis=(1, 2)))
    out = layers.dense(self.out_dim, ("embed", None), name="proj", **kw)(x)
    return out.astype(jnp.float32)
