"""Text variational heads: token features (B, L, D) + mask -> (mu, log_var), each (B, H, W, C).

Every head ends in one projection to 2C values per latent cell laid out as (..., H, W, 2C) and
split on the last axis into mu and log_var. That projection starts with a small kernel
(std ~ `out_init_scale` x input std) and a bias of 0 for mu and `init_log_var` (default 0.0)
for log_var. So at init mu ~ 0 and log_var ~ 0: the posterior is almost exactly the N(0, I)
prior, kl_raw starts near 0 rather than at thousands, and the KL gradient cannot blow up the
first steps; the flow and contrastive losses then pull the posterior away from the prior.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple

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


class GridQueryBlock(nn.Module):
  """Pre-LN: queries attend to each other (optional), then to the caption tokens, then an MLP.

  `attn_scale` multiplies the normalised queries before their projection, so it multiplies the
  cross-attention logits: above 1 the attention is selective from initialisation instead of
  nearly uniform (uniform attention gives every query the same caption vector).
  """

  num_heads: int
  mlp_ratio: float = 4.0
  self_attention: bool = True
  attn_scale: float = 1.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, context: jax.Array, mask: jax.Array
  ) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(name=name, **kw)
    if self.self_attention:
      # Gated from 0: at init the queries do not yet average each other's
      # content (that would make the cells alike again); the gate learns.
      gate = self.param(
          "self_gate", nn.initializers.zeros_init(), (), self.param_dtype
      )
      x = x + gate.astype(self.dtype) * layers.Attention(
          self.num_heads, name="self_attn", **kw
      )(norm("ln_self")(x))
    q = norm("ln_q")(x) * self.attn_scale
    x = x + layers.Attention(self.num_heads, name="attn", **kw)(
        q, norm("ln_kv")(context), mask
    )
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + layers.MLP(hidden, name="mlp", **kw)(norm("ln_mlp")(x))


class GridQueryHead(_HeadBase):
  """Option A: a (G, G) query grid cross-attends to the tokens; each cell projects to the 2C
  moments of its (H/G, W/G) patch (pixel shuffle), then `num_smooth` residual depthwise 3x3
  convs add local continuity. grid_size None means G = H = W per axis (one query per cell).

  The queries must differ by position from the first step, or every cell receives the same
  caption vector and nothing is placed (the first version measured tile_repeat 0.98 at init,
  `ztext.z_text_measures`). So: the queries are 2D sin-cos positions times
  `query_pos_scale` plus a small learned part; the tokens get 1D sin-cos positions of their index
  (`token_pos`) so keys differ by place in the caption; the queries attend to each other
  (`self_attention`, gated from 0) so cells can divide the objects between them; and
  `attn_scale` sharpens the cross-attention (see GridQueryBlock). At restart.py's sizes this
  brings tile_repeat at init from 0.98 to ~0.76 (tests/test_text_head_grid.py). It cannot go
  much lower at init: about half of the caption-dependent variation of the embedded text
  encoder's token features is shared by every token of a caption, so even one-hot attention
  hands every cell that shared part. query_pos_scale=1, token_pos=False, self_attention=False,
  attn_scale=1 is the first version (docs/heads.md's first ablation; its checkpoints still
  load)."""

  width: int = 256
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  grid_size: Optional[int] = None
  num_smooth: int = 2
  query_pos_scale: float = 4.0
  token_pos: bool = True
  self_attention: bool = True
  attn_scale: float = 8.0

  def grid(self) -> Tuple[int, int]:
    return self.grid_shape(self.grid_size)

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):
    gh, gw = self.grid()
    batch, length = tokens.shape[:2]
    queries = self.param(
        "queries",
        nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed")
        ),
        (gh * gw, self.width),
        self.param_dtype,
    )
    pos = self.query_pos_scale * jnp.asarray(
        layers.sincos_2d(self.width, gh, gw)
    )
    x = jnp.broadcast_to(
        (queries + pos).astype(self.dtype), (batch, gh * gw, self.width)
    )
    context = layers.dense(
        self.width, (None, "embed"), name="in_proj", **self.kw
    )(tokens)
    if self.token_pos:
      context = context + jnp.asarray(
          layers.sincos_1d(self.width, np.arange(length)), self.dtype
      )
    for i in range(self.depth):
      x = GridQueryBlock(
          self.num_heads,
          self.mlp_ratio,
          self.self_attention,
          self.attn_scale,
          name=f"block_{i}",
          **self.kw,
      )(x, context, mask)
    x = nn.LayerNorm(name="ln_final", **self.kw)(x)
    return self.cells_to_moments(
        x.reshape(batch, gh, gw, self.width), self.num_smooth
    )


class TokenSplatHead(_HeadBase):
  """Each token places its own content on the latent grid: z = sum_i map_i (x) content_i.

  A transformer over the tokens (as in token_transformer), then per token a map over the
  (G, G) grid (softmax over cells; padding tokens place nothing) and a content vector of
  `content_width`; the grid is the sum over tokens of map times content, projected per cell
  to the 2C moments of its (H/G, W/G) patch (pixel shuffle), then `num_smooth` residual
  depthwise 3x3 convs. The weights are the same for every token slot, so a word acts the same
  wherever the caption template puts it, and each token's contribution is a product of where
  (its map) and what (its content): a token that carries its object's colour and place puts
  that colour at that place. The flatten head (token_transformer) instead sums slot-specific
  linear maps of `reduced_width` features per token, where two objects' contributions may
  superpose and their colours blend: the hypothesis behind this head (measured:
  docs/recipes.md)."""

  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  grid_size: Optional[int] = None
  content_width: int = 64
  num_smooth: int = 2

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array):
    gh, gw = self.grid_shape(self.grid_size)
    batch = tokens.shape[0]
    x = layers.dense(self.width, (None, "embed"), name="in_proj", **self.kw)(
        tokens
    )
    for i in range(self.depth):
      x = layers.TransformerBlock(
          self.num_heads, self.mlp_ratio, name=f"block_{i}", **self.kw
      )(x, mask)
    x = nn.LayerNorm(name="ln_final", **self.kw)(x)
    logits = layers.dense(gh * gw, ("embed", None), name="where", **self.kw)(x)
    maps = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    maps = (maps * mask.astype(jnp.float32)[..., None]).astype(self.dtype)
    content = layers.dense(
        self.content_width, ("embed", None), name="what", **self.kw
    )(x)
    grid = jnp.einsum("blg,blk->bgk", maps, content).reshape(
        batch, gh, gw, self.content_width
    )
    grid = nn.LayerNorm(name="ln_grid", **self.kw)(grid)
    return self.cells_to_moments(grid, self.num_smooth)


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
