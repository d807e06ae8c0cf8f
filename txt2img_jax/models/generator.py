"""The whole trainable model as one linen module with one parameter subtree per group.

Top-level parameter names are the optimizer's parameter groups:
'text_encoder' (absent when a frozen pretrained encoder is used),
'text_head', 'image_encoder' (with the contrastive logit scale) and 'flow'.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import image_encoder as image_encoder_lib
from txt2img_jax.models import text_encoder as text_encoder_lib
from txt2img_jax.models import text_head as text_head_lib


class ContrastiveTower(nn.Module):
  """The image side of the contrastive loss and its learnable temperature."""

  out_dim: int
  width: int
  depth: int
  init_logit_scale: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    emb = image_encoder_lib.ImageEncoder(
        out_dim=self.out_dim,
        width=self.width,
        depth=self.depth,
        dtype=self.dtype,
        name="encoder",
    )(x1)
    scale = self.param(
        "logit_scale", nn.initializers.constant(self.init_logit_scale), ()
    )
    return emb, scale


class CrossFlow(nn.Module):
  """Text encoder (optional), text head, contrastive tower and flow DiT.

  Each part gets its own block of the config (`from_config` picks them), not
  the whole run's config.
  """

  text_encoder_config: Any  # config.text_encoder; unused with a frozen one.
  head_config: Any  # config.head (its kind and that kind's block).
  image_encoder_config: Any  # config.image_encoder.
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
    self.text_head = text_head_lib.make_text_head(
        self.head_config.kind,
        self.latent_shape,
        dtype=dtype,
        **head_kwargs(self.head_config),
    )
    h, w, ch = self.latent_shape
    i = self.image_encoder_config
    self.image_encoder = ContrastiveTower(
        out_dim=h * w * ch,
        width=i.width,
        depth=i.depth,
        init_logit_scale=i.init_logit_scale,
        dtype=dtype,
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
  ) -> "CrossFlow":
    return cls(
        text_encoder_config=config.text_encoder,
        head_config=config.head,
        image_encoder_config=config.image_encoder,
        flow_config=config.flow,
        latent_shape=tuple(latent_shape),
        vocab_size=vocab_size,
        max_len=config.data.max_len,
        dtype=config.dtype,
        embedded_text_encoder=embedded_text_encoder,
    )

  def encode_text(self, ids, mask):
    return self.text_encoder(ids, mask)

  def posterior(self, tokens, mask):
    return self.text_head(tokens, mask)

  def velocity(self, x, time_input, indicator):
    return self.flow(x, time_input, indicator)

  def embed_image(self, x1):
    return self.image_encoder(x1)

  def __call__(self, ids, mask, tokens, x1, time_input, indicator):
    """Touches every submodule once (used only to initialise)."""
    if self.embedded_text_encoder:
      tokens = self.encode_text(ids, mask)
    mu, _ = self.posterior(tokens, mask)
    self.embed_image(x1)
    return self.velocity(mu, time_input, indicator)


def head_kwargs(head_config: ml_collections.ConfigDict) -> dict:
  """The fields of the chosen head's own block (`config.head`)."""
  kind = head_config.kind
  if kind not in head_config:
    raise ValueError(f"head.kind={kind!r} has no config block head.{kind}")
  return dict(head_config[kind].to_dict())


def text_posterior(
    model, text_frozen, params, frozen_text, ids, mask, tokens=None
):
  """(mu, log_var) of the text head for a batch of captions.

  The token features are, in order of preference: `tokens` (cached by
  `prepare` from a frozen encoder), the frozen pretrained encoder run here
  (no gradient), or the model's own text encoder. The train step, the
  sampler and the experiments all call this.
  """
  if tokens is None and text_frozen is not None:
    tokens = text_frozen.apply(frozen_text, ids, mask)
  if tokens is not None:
    tokens = jax.lax.stop_gradient(tokens)
  else:
    tokens = model.apply({"params": params}, ids, mask, method="encode_text")
  return model.apply({"params": params}, tokens, mask, method="posterior")
