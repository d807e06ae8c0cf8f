"""The flow network v_theta(x_t, time, indicator): a DiT with adaLN-Zero blocks."""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import layers

Dtype = Any

NUM_INDICATORS = 2  # 0: null (classifier-free guidance), 1: conditional.


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


def patchify(x: jax.Array, p: int) -> jax.Array:
  """(B, H, W, C) -> (B, H/p * W/p, p*p*C), patches row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, shape: Tuple[int, int, int]) -> jax.Array:
  """Inverse of `patchify` for a latent of shape (H, W, C)."""
  h, w, c = shape
  x = x.reshape(x.shape[0], h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(x.shape[0], h, w, c)


def _zero_dense(features: int, names, name: str, kw) -> nn.Dense:
  return layers.dense(features, names, name=name, kernel_init=nn.initializers.zeros_init(), **kw)


class DiTBlock(nn.Module):
  """adaLN-Zero block: the conditioning gives shift/scale/gate for attention and MLP. The
  modulation starts at zero so every block starts as the identity."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    mod = _zero_dense(6 * width, ('embed', 'mlp'), 'modulation', kw)(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(use_bias=False, use_scale=False, name=name, **kw)
    h = modulate(norm('ln_attn')(x), shift_a, scale_a)
    x = x + gate_a[:, None] * layers.Attention(self.num_heads, name='attn', **kw)(h)
    h = modulate(norm('ln_mlp')(x), shift_m, scale_m)
    mlp = layers.MLP(int(width * self.mlp_ratio), name='mlp', **kw)
    return x + gate_m[:, None] * mlp(h)


class DiT(nn.Module):
  """Patchify -> + fixed 2D sin-cos positions -> adaLN-Zero blocks -> adaLN final -> unpatchify.

  __call__(x (B, H, W, C), time_input (B,) float, indicator (B,) int in {0, 1}) -> v (B, H, W, C)
  in float32. time_input may be t in [0, 1] or logSNR in about [-10, 10]: see
  `layers.ScalarEmbed` for the frequency range (time_min_freq .. time_max_freq rad/unit).
  The output is exactly zero at init (zero final linear).
  """
  latent_shape: Tuple[int, int, int]
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  time_embed_dim: Optional[int] = None  # Sinusoidal feature size; None -> width.
  time_min_freq: float = 0.05
  time_max_freq: float = 1000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def condition(self, time_input: jax.Array, indicator: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = layers.ScalarEmbed(self.width, self.time_embed_dim or self.width, self.time_min_freq,
                           self.time_max_freq, name='time_embed', **kw)(time_input)
    ind = nn.Embed(NUM_INDICATORS, self.width, name='indicator_embed', embedding_init=(
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, 'embed'))), **kw)
    return t + ind(indicator)

  @nn.compact
  def __call__(self, x: jax.Array, time_input: jax.Array, indicator: jax.Array) -> jax.Array:
    h, w, c = self.latent_shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'patch_size {p} does not divide latent {h}x{w}')
    if x.shape[1:] != (h, w, c):
      raise ValueError(f'input latent shape {x.shape[1:]} != latent_shape {(h, w, c)}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = layers.dense(self.width, (None, 'embed'), name='patch_embed', **kw)(
        patchify(x.astype(self.dtype), p))
    tokens = tokens + jnp.asarray(layers.sincos_2d(self.width, h // p, w // p), self.dtype)
    cond = self.condition(time_input, indicator)
    for i in range(self.depth):
      tokens = DiTBlock(self.num_heads, self.mlp_ratio, name=f'block_{i}', **kw)(tokens, cond)
    shift, scale = jnp.split(
        _zero_dense(2 * self.width, ('embed', 'mlp'), 'final_modulation', kw)(nn.silu(cond)),
        2, axis=-1)
    tokens = modulate(nn.LayerNorm(use_bias=False, use_scale=False, name='ln_final', **kw)(
        tokens), shift, scale)
    out = _zero_dense(p * p * c, ('embed', None), 'final', kw)(tokens)
    return unpatchify(out, p, self.latent_shape).astype(jnp.float32)
