"""The flow network v_theta(x_t, time, indicator): a DiT with adaLN-Zero blocks.

With scan=True the blocks run under `nn.scan`: one block is traced and compiled whatever the
depth, so the DiT's share of compile time stays flat at DiT-XL scale. Their parameters are then
stacked on a leading 'layers' axis under `blocks/`; `models/dit_params.py` converts parameter
trees (or whole train states) between that layout and the unrolled `block_0 .. block_N` one.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import layers

Dtype = Any

NUM_INDICATORS = 2  # 0: null (classifier-free guidance), 1: conditional.

# What a rematerialised block keeps for the backward pass: nothing ('full': recompute the whole
# block), or the outputs of its matmuls ('dots'; the cheap elementwise work is recomputed).
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


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
  return layers.dense(
      features, names, name=name, kernel_init=nn.initializers.zeros_init(), **kw
  )


class DiTBlock(nn.Module):
  """adaLN-Zero block: the conditioning gives shift/scale/gate for attention and MLP. The
  modulation starts at zero so every block starts as the identity."""

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scanned: bool = (
      False  # Under nn.scan the block returns (x, None): carry and no output.
  )
  cross_attention: bool = (
      False  # Attend to caption tokens after self-attention (noise path).
  )

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      c: jax.Array,
      context: Optional[jax.Array] = None,
      context_mask: Optional[jax.Array] = None,
  ):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.constrain(x)
    width = x.shape[-1]
    mod = _zero_dense(6 * width, ("embed", "mlp"), "modulation", kw)(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(
        mod, 6, axis=-1
    )
    norm = lambda name: nn.LayerNorm(
        use_bias=False, use_scale=False, name=name, **kw
    )
    h = modulate(norm("ln_attn")(x), shift_a, scale_a)
    x = x + gate_a[:, None] * layers.Attention(
        self.num_heads, name="attn", **kw
    )(h)
    if self.cross_attention:
      # Ungated, as in PixArt: the caption must reach every patch from step 0.
      h = nn.LayerNorm(name="ln_cross", **kw)(x)
      x = x + layers.Attention(self.num_heads, name="cross_attn", **kw)(
          h, context, context_mask
      )
    h = modulate(norm("ln_mlp")(x), shift_m, scale_m)
    mlp = layers.MLP(int(width * self.mlp_ratio), name="mlp", **kw)
    x = layers.constrain(x + gate_m[:, None] * mlp(h))
    return (x, None) if self.scanned else x


class DiT(nn.Module):
  """Patchify -> + fixed 2D sin-cos positions -> adaLN-Zero blocks -> adaLN final -> unpatchify.

  __call__(x (B, H, W, C), time_input (B,) float, indicator (B,) int in {0, 1}) -> v (B, H, W, C)
  in float32. time_input may be t in [0, 1] or logSNR in about [-10, 10]: see
  `layers.ScalarEmbed` for the frequency range (time_min_freq .. time_max_freq rad/unit).
  The output is exactly zero at init (every out_head's last layer starts at zero).

  With text_conditioning (the noise-path control, `objectives/noise_flow.py`), __call__ also
  takes caption token features (B, L, D) and their mask: their masked mean, projected, is added
  to the time + indicator embedding that drives adaLN, and every block cross-attends to the
  projected tokens plus one learned null token. A sample whose indicator is 0 (null, for
  classifier-free guidance) sees no caption: its pooled feature is zeroed and all its caption
  tokens are masked, so it attends to the null token alone.
  """

  latent_shape: Tuple[int, int, int]
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  time_embed_dim: Optional[int] = (
      None  # Sinusoidal feature size; None -> width.
  )
  time_min_freq: float = 0.05
  time_max_freq: float = 1000.0
  text_conditioning: bool = (
      False  # Caption tokens condition the blocks (noise path; see below).
  )
  scan: bool = (
      False  # Blocks under nn.scan (params stacked under 'blocks'), else unrolled.
  )
  remat: str = (
      "none"  # none | full | dots | dots_no_batch (see REMAT_POLICIES).
  )
  # How tokens become the output latent. DiT's 'linear' head decodes each token alone into
  # its p x p cells, so whatever it gets wrong jumps at every token edge: on images whose
  # detail is the token's size, a mosaic of token-sized blocks. 'conv' adds a 3x3
  # convolution over that output (zero at init; U-ViT's final conv block); 'overlap'
  # decodes every cell from its own token and its neighbours (a transposed convolution,
  # kernel 2p, stride p, zero at init), so neighbouring tokens agree where they meet.
  out_head: str = "linear"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def condition(self, time_input: jax.Array, indicator: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = layers.ScalarEmbed(
        self.width,
        self.time_embed_dim or self.width,
        self.time_min_freq,
        self.time_max_freq,
        name="time_embed",
        **kw,
    )(time_input)
    ind = nn.Embed(
        NUM_INDICATORS,
        self.width,
        name="indicator_embed",
        embedding_init=(
            nn.with_logical_partitioning(
                nn.initializers.normal(0.02), (None, "embed")
            )
        ),
        **kw,
    )
    return t + ind(indicator)

  def text_context(
      self, text: jax.Array, text_mask: jax.Array, indicator: jax.Array
  ) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """(pooled (B, width), context (B, 1 + L, width), context mask) with the caption removed
    from null samples."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    keep = indicator.astype(bool)
    mask = text_mask.astype(bool) & keep[:, None]
    pooled = layers.masked_mean(text.astype(self.dtype), mask)
    pooled = layers.dense(self.width, (None, "embed"), name="text_pool", **kw)(
        pooled
    )
    tokens = layers.dense(self.width, (None, "embed"), name="text_proj", **kw)(
        text.astype(self.dtype)
    )
    null = self.param(
        "null_token",
        nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, "embed")
        ),
        (1, self.width),
        self.param_dtype,
    )
    b = text.shape[0]
    null = jnp.broadcast_to(null.astype(self.dtype)[None], (b, 1, self.width))
    context = jnp.concatenate([null, tokens], axis=1)
    context_mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
    return pooled, context, context_mask

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      time_input: jax.Array,
      indicator: jax.Array,
      text: Optional[jax.Array] = None,
      text_mask: Optional[jax.Array] = None,
  ) -> jax.Array:
    if self.text_conditioning != (text is not None):
      raise ValueError(
          "DiT(text_conditioning=%s) called %s caption tokens"
          % (self.text_conditioning, "with" if text is not None else "without")
      )
    h, w, c = self.latent_shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"patch_size {p} does not divide latent {h}x{w}")
    if x.shape[1:] != (h, w, c):
      raise ValueError(
          f"input latent shape {x.shape[1:]} != latent_shape {(h, w, c)}"
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens = layers.dense(
        self.width, (None, "embed"), name="patch_embed", **kw
    )(patchify(x.astype(self.dtype), p))
    tokens = tokens + jnp.asarray(
        layers.sincos_2d(self.width, h // p, w // p), self.dtype
    )
    cond = self.condition(time_input, indicator)
    context = context_mask = None
    if self.text_conditioning:
      if text_mask is None:
        text_mask = jnp.ones(text.shape[:2], bool)
      pooled, context, context_mask = self.text_context(
          text, text_mask, indicator
      )
      cond = cond + pooled
    tokens = self.blocks(tokens, cond, context, context_mask)
    shift, scale = jnp.split(
        _zero_dense(2 * self.width, ("embed", "mlp"), "final_modulation", kw)(
            nn.silu(cond)
        ),
        2,
        axis=-1,
    )
    tokens = modulate(
        nn.LayerNorm(use_bias=False, use_scale=False, name="ln_final", **kw)(
            tokens
        ),
        shift,
        scale,
    )
    return self.decode(tokens).astype(jnp.float32)

  def decode(self, tokens: jax.Array) -> jax.Array:
    """(B, N, width) final tokens -> (B, H, W, C) by `out_head` (from __call__)."""
    h, w, c = self.latent_shape
    p = self.patch_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    zeros = nn.initializers.zeros_init()
    if self.out_head == "overlap":
      grid = tokens.reshape(tokens.shape[0], h // p, w // p, self.width)
      return nn.ConvTranspose(
          c,
          (2 * p, 2 * p),
          strides=(p, p),
          padding="SAME",
          name="final_overlap",
          kernel_init=nn.with_logical_partitioning(
              zeros, (None, None, "embed", None)
          ),
          **kw,
      )(grid)
    v = unpatchify(
        _zero_dense(p * p * c, ("embed", None), "final", kw)(tokens),
        p,
        self.latent_shape,
    )
    if self.out_head == "conv":
      v = v + nn.Conv(
          c,
          (3, 3),
          padding="SAME",
          name="final_conv",
          kernel_init=(
              nn.with_logical_partitioning(zeros, (None, None, None, None))
          ),
          **kw,
      )(v)
    elif self.out_head != "linear":
      raise ValueError(
          f"out_head={self.out_head!r}: expected linear | conv | overlap"
      )
    return v

  def blocks(
      self,
      tokens: jax.Array,
      cond: jax.Array,
      context: Optional[jax.Array] = None,
      context_mask: Optional[jax.Array] = None,
  ) -> jax.Array:
    """The `depth` adaLN-Zero blocks, scanned or unrolled, optionally rematerialised."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    block = DiTBlock
    if self.remat != "none":
      if self.remat not in REMAT_POLICIES:
        raise ValueError(
            f"flow.remat={self.remat!r}: expected none or one of "
            f"{sorted(REMAT_POLICIES)}"
        )
      # Under scan the loop already keeps XLA from merging recomputation with the forward pass.
      block = nn.remat(
          block, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan
      )
    kw["cross_attention"] = self.text_conditioning
    if not self.scan:
      for i in range(self.depth):
        tokens = block(self.num_heads, self.mlp_ratio, name=f"block_{i}", **kw)(
            tokens, cond, context, context_mask
        )
      return tokens
    stack = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 3,
        length=self.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    tokens, _ = stack(
        self.num_heads, self.mlp_ratio, scanned=True, name="blocks", **kw
    )(tokens, cond, context, context_mask)
    return tokens
