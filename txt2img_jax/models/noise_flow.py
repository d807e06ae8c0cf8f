"""The noise-path control's model: the text encoder and the same DiT, conditioned on the caption.

No text head and no contrastive tower: the caption does not become the source of the flow, it
conditions the flow network (`dit.DiT` with text_conditioning: pooled tokens through adaLN,
cross-attention to the tokens). Top-level parameter names are optimizer groups, as in
`generator.CrossFlow`: 'text_encoder' (absent with a frozen pretrained encoder) and 'flow'; the
config's other groups (text_head, image_encoder) have no parameters here and are ignored.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import text_encoder as text_encoder_lib


class NoiseFlow(nn.Module):
  """Text encoder (optional) and a text-conditioned flow DiT."""

  text_encoder_config: Any  # config.text_encoder; unused with a frozen one.
  flow_config: Any  # config.flow.
  latent_shape: tuple[int, int, int]
  vocab_size: int
  max_len: int
  dtype: Any = jnp.float32
  embedded_text_encoder: bool = True

  def setup(self):
    dtype = jnp.dtype(self.dtype)
    if self.embedded_text_encoder:
      self.text_encoder = text_encoder_lib.SmallTextEncoder.from_config(
          self.text_encoder_config, self.vocab_size, self.max_len, dtype
      )
    f = self.flow_config
    self.flow = dit_lib.DiT(
        latent_shape=self.latent_shape,
        patch_size=f.patch_size,
        width=f.width,
        depth=f.depth,
        num_heads=f.num_heads,
        mlp_ratio=f.mlp_ratio,
        dtype=dtype,
        text_conditioning=True,
        scan=f.get("scan", False),
        remat=f.get("remat", "none"),
        out_head=f.out_head,
    )

  @classmethod
  def from_config(
      cls,
      config,
      latent_shape,
      vocab_size: int,
      embedded_text_encoder: bool = True,
  ) -> "NoiseFlow":
    return cls(
        text_encoder_config=config.text_encoder,
        flow_config=config.flow,
        latent_shape=tuple(latent_shape),
        vocab_size=vocab_size,
        max_len=config.data.max_len,
        dtype=config.dtype,
        embedded_text_encoder=embedded_text_encoder,
    )

  def encode_text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def velocity(self, x, time_input, indicator, tokens, mask):
    return self.flow(x, time_input, indicator, tokens, mask)

  def __call__(self, ids, mask, tokens, x1, time_input, indicator):
    """Touches every submodule once (used only to initialise)."""
    if self.embedded_text_encoder:
      tokens = self.encode_text(ids, mask)
    return self.velocity(x1, time_input, indicator, tokens, mask)


def caption_tokens(
    model, text_frozen, params, frozen_text, ids, mask, tokens=None
) -> jax.Array:
  """Token features (B, L, D) of a batch of captions: `tokens` cached by `prepare`, a frozen
  pretrained encoder run here (no gradient), or the model's own trained encoder.
  """
  if tokens is None and text_frozen is not None:
    tokens = text_frozen.apply(frozen_text, ids, mask)
  if tokens is not None:
    return jax.lax.stop_gradient(tokens)
  return model.apply({"params": params}, ids, mask, method="encode_text")
