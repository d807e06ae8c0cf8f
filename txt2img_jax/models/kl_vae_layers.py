"""The linen modules of a diffusers `AutoencoderKL`: encoder, decoder, their blocks and attention.

Names follow diffusers' parameter names (`kl_vae.py` maps them to the safetensors keys). Tensors
are NHWC; the weights are float32 and the activations run in the module's `dtype`.
"""

import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Moments = Tuple[jax.Array, jax.Array]

_EPS = 1e-6  # every GroupNorm of this VAE


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The architecture-defining part of a diffusers AutoencoderKL config.json."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True


# ------------------------------------------------------------------------------- building blocks


def _conv(
    features: int, kernel: int, dtype, name: str, stride: int = 1, padding=None
) -> nn.Conv:
  pad = ((kernel // 2,) * 2,) * 2 if padding is None else padding
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=pad,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def _norm(groups: int, dtype, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(
      num_groups=groups,
      epsilon=_EPS,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


class ResnetBlock(nn.Module):
  """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1-projected where widths differ) skip.

  `features=None` keeps the input's width (the mid block's resnets).
  """

  features: Optional[int]
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    features = self.features or x.shape[-1]
    h = nn.silu(_norm(self.groups, self.dtype, "norm1")(x))
    h = _conv(features, 3, self.dtype, "conv1")(h)
    h = nn.silu(_norm(self.groups, self.dtype, "norm2")(h))
    h = _conv(features, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != features:
      x = _conv(features, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class SelfAttention(nn.Module):
  """One head over all H*W positions, with a residual; diffusers' mid-block `Attention`."""

  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    dense = lambda name: nn.Dense(
        c, dtype=self.dtype, param_dtype=jnp.float32, name=name
    )
    y = _norm(self.groups, self.dtype, "group_norm")(x).reshape(b, h * w, c)
    q, k, v = dense("to_q")(y), dense("to_k")(y), dense("to_v")(y)
    # Softmax in float32: the logits of a 64x64 map (4096 keys) lose too much in bfloat16.
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """resnet -> (attention) -> resnet at the lowest resolution."""

  groups: int
  add_attention: bool
  dtype: Any

  def setup(self):
    self.resnets = [
        ResnetBlock(None, self.groups, self.dtype) for _ in range(2)
    ]
    if self.add_attention:
      self.attentions = [SelfAttention(self.groups, self.dtype)]

  def __call__(self, x):
    x = self.resnets[0](x)
    if self.add_attention:
      x = self.attentions[0](x)
    return self.resnets[1](x)


class Downsample(nn.Module):
  """Stride-2 conv3x3 with zero padding on the bottom/right only (diffusers' padding=0 path)."""

  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding="VALID")(
        x
    )


class Upsample(nn.Module):
  """Nearest-neighbour x2, then conv3x3."""

  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, self.dtype, "conv")(x)


class DownBlock(nn.Module):
  features: int
  num_layers: int
  add_downsample: bool
  groups: int
  dtype: Any

  def setup(self):
    self.resnets = [
        ResnetBlock(self.features, self.groups, self.dtype)
        for _ in range(self.num_layers)
    ]
    if self.add_downsample:
      self.downsamplers = [Downsample(self.dtype)]

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    return self.downsamplers[0](x) if self.add_downsample else x


class UpBlock(nn.Module):
  features: int
  num_layers: int
  add_upsample: bool
  groups: int
  dtype: Any

  def setup(self):
    self.resnets = [
        ResnetBlock(self.features, self.groups, self.dtype)
        for _ in range(self.num_layers)
    ]
    if self.add_upsample:
      self.upsamplers = [Upsample(self.dtype)]

  def __call__(self, x):
    for resnet in self.resnets:
      x = resnet(x)
    return self.upsamplers[0](x) if self.add_upsample else x


# ------------------------------------------------------------------------------ encoder / decoder


class Encoder(nn.Module):
  """conv_in -> down blocks (x2 downsample on all but the last) -> mid -> norm, SiLU -> conv_out
  to 2 * latent_channels (mean and log-variance)."""

  config: VAEConfig
  dtype: Any

  def setup(self):
    c, g = self.config, self.config.norm_num_groups
    widths = c.block_out_channels
    self.conv_in = _conv(widths[0], 3, self.dtype, "conv_in")
    self.down_blocks = [
        DownBlock(w, c.layers_per_block, i < len(widths) - 1, g, self.dtype)
        for i, w in enumerate(widths)
    ]
    self.mid_block = MidBlock(g, c.mid_block_add_attention, self.dtype)
    self.conv_norm_out = _norm(g, self.dtype, "conv_norm_out")
    self.conv_out = _conv(2 * c.latent_channels, 3, self.dtype, "conv_out")

  def __call__(self, x):
    x = self.conv_in(x)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
  """conv_in -> mid -> up blocks (widest first, x2 upsample on all but the last) -> norm, SiLU ->
  conv_out to out_channels."""

  config: VAEConfig
  dtype: Any

  def setup(self):
    c, g = self.config, self.config.norm_num_groups
    widths = tuple(reversed(c.block_out_channels))
    self.conv_in = _conv(widths[0], 3, self.dtype, "conv_in")
    self.mid_block = MidBlock(g, c.mid_block_add_attention, self.dtype)
    self.up_blocks = [
        UpBlock(w, c.layers_per_block + 1, i < len(widths) - 1, g, self.dtype)
        for i, w in enumerate(widths)
    ]
    self.conv_norm_out = _norm(g, self.dtype, "conv_norm_out")
    self.conv_out = _conv(c.out_channels, 3, self.dtype, "conv_out")

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for block in self.up_blocks:
      x = block(x)
    return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKLModule(nn.Module):
  """The raw (unscaled) VAE: `encode` gives (mean, logvar), `decode` maps a latent to [-1, 1]."""

  config: VAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    self.encoder = Encoder(c, self.dtype)
    self.decoder = Decoder(c, self.dtype)
    if c.use_quant_conv:
      self.quant_conv = _conv(
          2 * c.latent_channels, 1, self.dtype, "quant_conv"
      )
    if c.use_post_quant_conv:
      self.post_quant_conv = _conv(
          c.latent_channels, 1, self.dtype, "post_quant_conv"
      )

  def encode(self, x) -> Moments:
    h = self.encoder(x)
    if self.config.use_quant_conv:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, logvar

  def decode(self, z):
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x):
    return self.decode(self.encode(x)[0])
