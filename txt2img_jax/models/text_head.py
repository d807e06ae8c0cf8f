"""Text variational heads: token features (B, L, D) + mask -> (mu, log_var), each (B, H, W, C).

Every head ends in one projection to 2C values per latent cell laid out as (..., H, W, 2C) and
split on the last axis into mu and log_var. That projection starts with a small kernel
(std ~ `out_init_scale` x input std) and a bias of 0 for mu and `init_log_var` (default 0.0)
for log_var. So at init mu ~ 0 and log_var ~ 0: the posterior is almost exactly the N(0, I)
prior, kl_raw starts near 0 rather than at thousands, and the KL gradient cannot blow up the
first steps; the flow and contrastive losses then pull the posterior away from the prior.

The shared pieces are in text_head_base.py, the grid heads in
text_head_grid.py; this module has the other heads, the registry and the
checks of a head's config.
"""

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from txt2img_jax.models import layers
from txt2img_jax.models.text_head_base import ConvBlock
from txt2img_jax.models.text_head_base import _HeadBase
from txt2img_jax.models.text_head_base import moments_bias_init
from txt2img_jax.models.text_head_base import small_kernel_init
from txt2img_jax.models.text_head_base import split_moments
from txt2img_jax.models.text_head_grid import GridQueryHead
from txt2img_jax.models.text_head_grid import TokenSplatHead


class PooledMLPHead(_HeadBase):
  """The note's baseline: masked mean pool -> `num_layers` GELU layers -> 2HWC. Known to fail:
  nothing in it knows that neighbouring latent cells are neighbours."""

  hidden: int = 1024
  num_layers: int = 3

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):
    x = layers.masked_mean(tokens.astype(self.dtype), mask)
    for i in range(self.num_layers):
      names = ("embed", "mlp") if i == 0 else (None, "mlp")
      x = nn.gelu(
          layers.dense(self.hidden, names, name=f"fc_{i}", **self.kw)(x)
      )
    return self.flat_to_moments(x, ("mlp", "latent"))


class TokenTransformerHead(_HeadBase):
  """CrossFlow's head: transformer over all tokens, per-token reduction to `reduced_width`,
  flatten (L * reduced_width), dense to 2HWC. L must be the fixed padded length (max_len).
  """

  width: int = 256
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  reduced_width: int = 8

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):
    x = layers.dense(self.width, (None, "embed"), name="in_proj", **self.kw)(
        tokens
    )
    for i in range(self.depth):
      x = layers.TransformerBlock(
          self.num_heads, self.mlp_ratio, name=f"block_{i}", **self.kw
      )(x, mask)
    x = nn.LayerNorm(name="ln_final", **self.kw)(x)
    x = layers.dense(
        self.reduced_width, ("embed", None), name="reduce", **self.kw
    )(x)
    # Zeroing padded positions keeps their (meaningless) features out of the flatten.
    x = x * mask.astype(x.dtype)[..., None]
    return self.flat_to_moments(x.reshape(x.shape[0], -1), (None, "latent"))


class MLPConvHead(_HeadBase):
  """Option B: masked mean pool -> MLP -> (H, W, conv_width) -> `num_blocks` residual
  depthwise+pointwise conv blocks with `norm` ('group' | 'layer') -> 1x1 conv to 2C.
  """

  hidden: int = 1024
  num_layers: int = 2
  conv_width: int = 32
  num_blocks: int = 3
  norm: str = "group"
  num_groups: int = 8

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):
    h, w, _ = self.latent_shape
    x = layers.masked_mean(tokens.astype(self.dtype), mask)
    for i in range(self.num_layers):
      names = ("embed", "mlp") if i == 0 else (None, "mlp")
      x = nn.gelu(
          layers.dense(self.hidden, names, name=f"fc_{i}", **self.kw)(x)
      )
    x = layers.dense(
        h * w * self.conv_width, ("mlp", "latent"), name="to_map", **self.kw
    )(x)
    x = x.reshape(x.shape[0], h, w, self.conv_width)
    for i in range(self.num_blocks):
      x = ConvBlock(
          self.norm, self.num_groups, name=f"conv_block_{i}", **self.kw
      )(x)
    x = nn.gelu(x)
    out = layers.conv(
        2 * self.latent_shape[2],
        (1, 1),
        (None, None, "conv_in", None),
        name="out",
        kernel_init=small_kernel_init(self.out_init_scale),
        bias_init=moments_bias_init(self.latent_shape[2], self.init_log_var),
        **self.kw,
    )(x)
    return split_moments(out)


HEADS = {
    "pooled_mlp": PooledMLPHead,
    "token_transformer": TokenTransformerHead,
    "grid_query": GridQueryHead,
    "mlp_conv": MLPConvHead,
    "token_splat": TokenSplatHead,
}


_NOT_CONFIG = ("parent", "name", "latent_shape")
# Smallest valid value of each integer field (a depth of 0 is a legal ablation).


_INT_FIELDS = {
    "hidden": 1,
    "width": 1,
    "num_heads": 1,
    "reduced_width": 1,
    "conv_width": 1,
    "num_groups": 1,
    "num_layers": 0,
    "depth": 0,
    "num_blocks": 0,
    "num_smooth": 0,
    "content_width": 1,
}


def _config_fields(kind: str):
  return {
      f.name: f
      for f in dataclasses.fields(HEADS[kind])
      if f.name not in _NOT_CONFIG
  }


def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def _check_sizes(kind: str, latent_shape: Sequence[int], cfg: dict):
  h, w, _ = latent_shape
  for key, low in _INT_FIELDS.items():
    if key in cfg:
      _require(
          isinstance(cfg[key], (int, np.integer)) and cfg[key] >= low,
          f"text head {kind!r}: {key} must be an integer >= {low}, got {cfg[key]!r}",
      )
  if "num_heads" in cfg:
    _require(
        cfg["width"] % cfg["num_heads"] == 0,
        f'text head {kind!r}: width {cfg["width"]} is not divisible by num_heads '
        f'{cfg["num_heads"]}',
    )
  if kind == "grid_query":
    _require(
        cfg["width"] % 4 == 0,
        f'text head grid_query: width {cfg["width"]} must be divisible by 4 (2D sin-cos)',
    )
    for key in ("query_pos_scale", "attn_scale"):
      _require(
          isinstance(cfg[key], (int, float)) and cfg[key] > 0,
          f"text head grid_query: {key} must be a number > 0, got {cfg[key]!r}",
      )
  if kind in ("grid_query", "token_splat"):
    g = cfg["grid_size"]
    if g is None:
      return
    _require(
        isinstance(g, (int, np.integer))
        and g >= 1
        and h % g == 0
        and w % g == 0,
        f"text head {kind}: grid_size {g!r} must divide the latent height {h} and "
        f"width {w}",
    )
  if kind == "mlp_conv":
    _require(
        cfg["norm"] in ("group", "layer"),
        f"text head mlp_conv: norm must be 'group' or 'layer', got {cfg['norm']!r}",
    )
    if cfg["norm"] == "group":
      _require(
          cfg["conv_width"] % cfg["num_groups"] == 0,
          f'text head mlp_conv: conv_width {cfg["conv_width"]} is not divisible by '
          f'num_groups {cfg["num_groups"]}',
      )


def check_text_head_config(
    kind: str, latent_shape: Sequence[int], **kwargs
) -> None:
  """Raises ValueError if the head cannot be built for latent_shape. Builds nothing."""
  _require(
      kind in HEADS,
      f"unknown text head kind {kind!r}; expected one of {sorted(HEADS)}",
  )
  _require(
      len(tuple(latent_shape)) == 3
      and all(isinstance(s, (int, np.integer)) and s > 0 for s in latent_shape),
      f"latent_shape must be three positive ints (H, W, C), got {latent_shape!r}",
  )
  fields = _config_fields(kind)
  unknown = sorted(set(kwargs) - set(fields))
  _require(
      not unknown,
      f"text head {kind!r} got unknown fields {unknown}; "
      f"valid: {sorted(fields)}",
  )
  cfg = {name: f.default for name, f in fields.items()}
  cfg.update(kwargs)
  _check_sizes(kind, latent_shape, cfg)


def make_text_head(
    kind: str, latent_shape: Sequence[int], **kwargs
) -> nn.Module:
  """Builds the head `kind` for latent_shape (H, W, C); kwargs are that head's fields."""
  check_text_head_config(kind, latent_shape, **kwargs)
  return HEADS[kind](latent_shape=tuple(int(s) for s in latent_shape), **kwargs)
