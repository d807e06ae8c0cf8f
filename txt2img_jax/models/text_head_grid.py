"""The text heads that place each token's content on the latent grid:
grid_query (cells attend to the tokens) and token_splat (tokens splat onto
cells)."""

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import layers
from txt2img_jax.models.text_head_base import Dtype
from txt2img_jax.models.text_head_base import _HeadBase


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
