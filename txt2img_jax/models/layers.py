"""Shared building blocks for every model in the package.

All kernels and embeddings carry logical axis names (see `nn.with_logical_partitioning`). The names
used across the package:

  'embed'     model width
  'mlp'       hidden side of MLPs (and of adaLN modulation projections)
  'heads'     the head side of attention q/k/v/out projections
  'vocab'     token vocabulary
  'latent'    the flattened latent side of large dense layers
  'conv_in'   input channels of a conv kernel
  'conv_out'  output channels of a conv kernel

A kernel never names the same logical axis twice: if the rules map both to one mesh axis the
partition spec would be invalid. Small kernels use None.
"""

import contextlib
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]
LogicalNames = Tuple[Optional[str], ...]

default_kernel_init = nn.initializers.lecun_normal()


def dense(
    features: int,
    names: LogicalNames,
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = nn.initializers.zeros_init(),
    use_bias: bool = True,
    name: Optional[str] = None,
) -> nn.Dense:
  """nn.Dense whose kernel carries logical axis names (input side, output side)."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=bias_init,
      name=name,
  )


def conv(
    features: int,
    kernel_size: Sequence[int],
    names: LogicalNames,
    *,
    dtype: Dtype,
    param_dtype: Dtype,
    strides: int = 1,
    feature_group_count: int = 1,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = nn.initializers.zeros_init(),
    name: Optional[str] = None,
) -> nn.Conv:
  """nn.Conv (SAME padding) whose kernel carries logical axis names."""
  return nn.Conv(
      features,
      tuple(kernel_size),
      strides=strides,
      padding="SAME",
      feature_group_count=feature_group_count,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=bias_init,
      name=name,
  )


# Activations of token sequences: the batch split as the rules say ('data').
TOKENS = ("batch", "length", "embed")
_ACTIVATION_SHARDING = []  # (mesh, rules) while a train step is traced.


@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """While tracing under it, `constrain` pins activations to `mesh` by the
  logical-axis `rules` (`state.jit_train_step` sets it)."""
  _ACTIVATION_SHARDING.append((mesh, rules))
  try:
    yield
  finally:
    _ACTIVATION_SHARDING.pop()


def constrain(x: jax.Array, names: Sequence[Optional[str]] = TOKENS):
  """x's sharding by logical axis names under `activation_sharding`;
  elsewhere x itself.

  Without it the partitioner may meet FSDP-split weights by gathering the
  whole batch's activations instead of the weights (the ahead-of-time
  compile of DiT-XL/2 with mesh.preset=fsdp showed ~700 GiB of all-gathers
  per device per step); pinning a block's input and output to the batch
  split leaves it the weights to gather.
  """
  if not _ACTIVATION_SHARDING:
    return x
  mesh, rules = _ACTIVATION_SHARDING[-1]
  spec = nn.logical_to_mesh_axes(tuple(names), rules)
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, spec)
  )


def masked_mean(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over the token axis of (B, L, D) counting only mask == True positions."""
  weights = mask.astype(tokens.dtype)[..., None]
  total = jnp.sum(tokens * weights, axis=1)
  # A row with no valid token pools to zeros instead of NaN.
  count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  return total / count


class MLP(nn.Module):
  """Two-layer GELU MLP: width -> hidden -> width (or out_features)."""

  hidden: int
  out_features: Optional[int] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = self.out_features or x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    x = nn.gelu(x)
    return dense(out, ("mlp", "embed"), name="fc2", **kw)(x)


class Attention(nn.Module):
  """Multi-head attention; self-attention when `context` is None.

  `mask` is a key mask (B, Lk): False keys receive no attention. Logits and softmax run in
  float32 so a bf16 compute dtype does not saturate the mask.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      context: Optional[jax.Array] = None,
      mask: Optional[jax.Array] = None,
  ) -> jax.Array:
    context = x if context is None else context
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(
          f"width {width} is not divisible by num_heads {self.num_heads}"
      )
    head_dim = width // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def heads(name, inputs):
      y = dense(width, ("embed", "heads"), name=name, **kw)(inputs)
      return y.reshape(*y.shape[:-1], self.num_heads, head_dim)

    q, k, v = heads("query", x), heads("key", context), heads("value", context)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    logits = logits / np.sqrt(head_dim)
    if mask is not None:
      keep = mask.astype(bool)[:, None, None, :]
      logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(*x.shape[:-1], width)
    return dense(width, ("heads", "embed"), name="out", **kw)(out)


class TransformerBlock(nn.Module):
  """Pre-LN block: x + attn(LN x) [+ cross-attn to context], then x + MLP(LN x)."""

  num_heads: int
  mlp_ratio: float = 4.0
  cross_attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      mask: Optional[jax.Array] = None,
      context: Optional[jax.Array] = None,
  ) -> jax.Array:
    """With cross_attention, `mask` masks the context tokens; otherwise it masks x's tokens."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = constrain(x)
    norm = lambda name: nn.LayerNorm(name=name, **kw)
    attn = Attention(self.num_heads, name="attn", **kw)
    if self.cross_attention:
      x = x + attn(norm("ln_q")(x), norm("ln_kv")(context), mask)
    else:
      x = x + attn(norm("ln_attn")(x), None, mask)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return constrain(x + MLP(hidden, name="mlp", **kw)(norm("ln_mlp")(x)))


def sincos_1d(width: int, positions: np.ndarray) -> np.ndarray:
  """Fixed sin-cos features (N, width) of integer positions, MAE-style frequencies."""
  if width % 2:
    raise ValueError(f"sin-cos width must be even, got {width}")
  omega = 1.0 / 10000 ** (
      np.arange(width // 2, dtype=np.float64) / (width / 2.0)
  )
  angles = positions.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(width: int, height: int, grid_width: int) -> np.ndarray:
  """Fixed 2D sin-cos position embedding, (height * grid_width, width), row-major."""
  if width % 4:
    raise ValueError(f"2D sin-cos width must be divisible by 4, got {width}")
  rows, cols = np.meshgrid(
      np.arange(height), np.arange(grid_width), indexing="ij"
  )
  emb = np.concatenate(
      [sincos_1d(width // 2, rows), sincos_1d(width // 2, cols)], axis=1
  )
  return emb.astype(np.float32)


def sinusoidal_features(
    x: jax.Array, dim: int, min_freq: float, max_freq: float
) -> jax.Array:
  """[cos, sin] of x times `dim // 2` frequencies spaced geometrically in [min_freq, max_freq].

  Frequencies are in radians per unit of x (no hidden x1000 scale), so the same features serve
  t in [0, 1] (fastest frequency resolves ~1/max_freq) and logSNR in [-10, 10] (the slowest one
  stays below one half-turn over the whole range, so it never wraps).
  """
  if dim % 2:
    raise ValueError(f"feature dim must be even, got {dim}")
  freqs = jnp.exp(jnp.linspace(jnp.log(max_freq), jnp.log(min_freq), dim // 2))
  angles = x.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class ScalarEmbed(nn.Module):
  """Embeds a scalar per example (B,) -> (B, width): sinusoidal features then a SiLU MLP.

  Defaults: frequencies 0.05 .. 1000 rad/unit. For t in [0, 1] this matches DiT's
  `t * 1000` with max period 10^4 in resolution; for logSNR in [-10, 10] the slowest
  frequency turns by 0.05 * 20 = 1 rad over the whole range, so features stay unambiguous.
  """

  width: int
  freq_dim: int = 256
  min_freq: float = 0.05
  max_freq: float = 1000.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats = sinusoidal_features(x, self.freq_dim, self.min_freq, self.max_freq)
    h = dense(self.width, (None, "mlp"), name="fc1", **kw)(
        feats.astype(self.dtype)
    )
    return dense(self.width, ("mlp", "embed"), name="fc2", **kw)(nn.silu(h))
