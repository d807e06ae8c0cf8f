"""Text encoders: a small transformer trained from scratch, or a frozen pretrained CLIP / T5."""

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from txt2img_jax.models import layers

Dtype = Any

_CLIP_TYPES = ('clip', 'clip_text_model')
_T5_TYPES = ('t5',)
# T5 has relative positions and no hard limit; tokenizers often report a huge sentinel instead.
_FALLBACK_MAX_LEN = 512


class SmallTextEncoder(nn.Module):
  """Token + learned position embedding, pre-LN transformer blocks, final LayerNorm.

  __call__(ids int32 (B, L), mask (B, L)) -> (B, L, width). Padded tokens (mask False) are never
  attended to, so they cannot change the features of valid tokens.
  """
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    if ids.shape[1] > self.max_len:
      raise ValueError(f'sequence length {ids.shape[1]} exceeds max_len {self.max_len}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    init = nn.initializers.normal(0.02)
    x = nn.Embed(self.vocab_size, self.width, name='token_embed',
                 embedding_init=nn.with_logical_partitioning(init, ('vocab', 'embed')),
                 **kw)(ids)
    pos = self.param('pos_embed', nn.with_logical_partitioning(init, (None, 'embed')),
                     (self.max_len, self.width), self.param_dtype)
    x = x + pos[None, :ids.shape[1]].astype(self.dtype)
    for i in range(self.depth):
      x = layers.TransformerBlock(self.num_heads, self.mlp_ratio, name=f'block_{i}', **kw)(
          x, mask)
    return nn.LayerNorm(name='ln_final', **kw)(x)


@dataclasses.dataclass(frozen=True)
class PretrainedTextEncoder:
  """A frozen pretrained encoder: `apply(params, ids, mask) -> (B, L, width)` is jit-safe."""
  params: Any
  apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
  width: int
  tokenizer: Any
  max_len: int
  model_type: str


def _model_type(name_or_path: str) -> str:
  from transformers import AutoConfig  # Imported lazily: transformers is slow to import.
  return AutoConfig.from_pretrained(name_or_path).model_type


def load_pretrained_text_encoder(name_or_path: str, dtype: Dtype = jnp.float32,
                                 max_len: Optional[int] = None) -> PretrainedTextEncoder:
  """Loads a Flax CLIP text model or T5 encoder plus its tokenizer (hub id or local dir).

  `max_len` defaults to CLIP's position table size, or the T5 tokenizer's limit (capped at 512).
  """
  import transformers

  # _do_init=False: the weights come from disk, so no full-size random init runs on the host.
  model_type = _model_type(name_or_path)
  if model_type in _CLIP_TYPES:
    model, params = transformers.FlaxCLIPTextModel.from_pretrained(
        name_or_path, dtype=dtype, _do_init=False)
    width = model.config.hidden_size
    default_len = model.config.max_position_embeddings
  elif model_type in _T5_TYPES:
    model, params = transformers.FlaxT5EncoderModel.from_pretrained(
        name_or_path, dtype=dtype, _do_init=False)
    width = model.config.d_model
    default_len = None
  else:
    raise ValueError(
        f'unsupported text encoder model_type {model_type!r} for {name_or_path!r}; '
        f'expected one of {_CLIP_TYPES + _T5_TYPES}')
  tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
  if default_len is None:
    limit = getattr(tokenizer, 'model_max_length', None) or _FALLBACK_MAX_LEN
    default_len = min(int(limit), _FALLBACK_MAX_LEN)

  def apply(params, ids, mask):
    out = model(input_ids=ids, attention_mask=mask.astype(jnp.int32), params=params,
                train=False)
    return out.last_hidden_state

  return PretrainedTextEncoder(params=params, apply=apply, width=width,
                               tokenizer=tokenizer, max_len=max_len or default_len,
                               model_type=model_type)
