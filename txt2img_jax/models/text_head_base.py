"""What every text head shares: the initialisation of its output projection
(a posterior at the prior), the split into moments, the base module, and
the residual conv block."""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import layers

Dtype = Any


LatentShape = Tuple[int, int, int]


def moments_bias_init(channels: int, init_log_var: float):
  """Bias init for a projection whose output ends in (..., 2C): [0]*C (mu), [lv]*C (log_var)."""

  def init(key, shape, dtype=jnp.float32):
    del key
    if shape[-1] % (2 * channels):
      raise ValueError(
          f"bias size {shape[-1]} is not a multiple of 2C = {2 * channels}"
      )
    cell = np.concatenate([np.zeros(channels), np.full(channels, init_log_var)])
    return jnp.asarray(np.tile(cell, shape[-1] // (2 * channels)), dtype)

  return init


def small_kernel_init(scale: float):
  return nn.initializers.variance_scaling(
      scale**2, "fan_in", "truncated_normal"
  )


def split_moments(out: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(B, H, W, 2C) -> mu, log_var in float32 (the KL and the sampling need full precision)."""
  mu, log_var = jnp.split(out.astype(jnp.float32), 2, axis=-1)
  return mu, log_var


class _HeadBase(nn.Module):
  """Fields shared by all heads."""

  latent_shape: LatentShape
  out_init_scale: float = 0.1
  init_log_var: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def kw(self):
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def moments_dense(self, features: int, names, name: str = "out") -> nn.Dense:
    return layers.dense(
        features,
        names,
        name=name,
        kernel_init=small_kernel_init(self.out_init_scale),
        bias_init=moments_bias_init(self.latent_shape[2], self.init_log_var),
        **self.kw,
    )

  def grid_shape(self, grid_size: Optional[int]) -> Tuple[int, int]:
    """(G, G) cells, or one per latent position when grid_size is None."""
    h, w, _ = self.latent_shape
    return (h, w) if grid_size is None else (grid_size, grid_size)

  def cells_to_moments(
      self, cells: jax.Array, num_smooth: int
  ) -> Tuple[jax.Array, jax.Array]:
    """(B, G, G, F) cell features -> each cell's (H/G, W/G) patch of 2C moments (pixel
    shuffle), then `num_smooth` residual depthwise 3x3 convs, zero-initialised so the smoothing
    starts as the identity and keeps the init moments."""
    h, w, c = self.latent_shape
    batch, gh, gw = cells.shape[:3]
    fh, fw = h // gh, w // gw
    x = self.moments_dense(fh * fw * 2 * c, ("embed", None))(cells)
    x = x.reshape(batch, gh, gw, fh, fw, 2 * c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, h, w, 2 * c)
    for i in range(num_smooth):
      x = x + layers.conv(
          2 * c,
          (3, 3),
          (None, None, None, "conv_out"),
          feature_group_count=2 * c,
          name=f"smooth_{i}",
          kernel_init=nn.initializers.zeros_init(),
          **self.kw,
      )(x)
    return split_moments(x)

  def flat_to_moments(
      self, flat: jax.Array, names
  ) -> Tuple[jax.Array, jax.Array]:
    """Dense from (B, F) to 2HWC values, reshaped to (B, H, W, 2C) and split."""
    h, w, c = self.latent_shape
    out = self.moments_dense(h * w * 2 * c, names)(flat)
    return split_moments(out.reshape(flat.shape[0], h, w, 2 * c))


class ConvBlock(nn.Module):
  """Residual: norm -> depthwise 3x3 -> GELU -> pointwise 1x1 (zero-init, so identity at start)."""

  norm: str = "group"
  num_groups: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ch = x.shape[-1]
    if self.norm == "group":
      y = nn.GroupNorm(num_groups=self.num_groups, name="norm", **kw)(x)
    else:
      y = nn.LayerNorm(name="norm", **kw)(x)
    y = layers.conv(
        ch,
        (3, 3),
        (None, None, None, "conv_out"),
        feature_group_count=ch,
        name="depthwise",
        **kw,
    )(y)
    y = layers.conv(
        ch,
        (1, 1),
        (None, None, "conv_in", "conv_out"),
        name="pointwise",
        kernel_init=nn.initializers.zeros_init(),
        **kw,
    )(nn.gelu(y))
    return x + y
