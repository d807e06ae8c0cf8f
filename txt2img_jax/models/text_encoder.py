"""Text encoders: a small transformer trained from scratch, or a frozen pretrained CLIP / T5."""

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import layers
from txt2img_jax.models import text_encoder_weights as weights_lib
from txt2img_jax.utils import hub
from txt2img_jax.utils import local_parallel

Dtype = Any

_CLIP_TYPES = ("clip", "clip_text_model")
_T5_TYPES = ("t5",)
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

  @classmethod
  def from_config(
      cls, config, vocab_size: int, max_len: int, dtype: Dtype = jnp.float32
  ) -> "SmallTextEncoder":
    """The embedded encoder a run's `config.text_encoder` describes."""
    return cls(
        vocab_size=vocab_size,
        max_len=max_len,
        width=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        dtype=dtype,
    )

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    if ids.shape[1] > self.max_len:
      raise ValueError(
          f"sequence length {ids.shape[1]} exceeds max_len {self.max_len}"
      )
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    init = nn.initializers.normal(0.02)
    x = nn.Embed(
        self.vocab_size,
        self.width,
        name="token_embed",
        embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
        **kw,
    )(ids)
    pos = self.param(
        "pos_embed",
        nn.with_logical_partitioning(init, (None, "embed")),
        (self.max_len, self.width),
        self.param_dtype,
    )
    x = x + pos[None, : ids.shape[1]].astype(self.dtype)
    for i in range(self.depth):
      x = layers.TransformerBlock(
          self.num_heads, self.mlp_ratio, name=f"block_{i}", **kw
      )(x, mask)
    return nn.LayerNorm(name="ln_final", **kw)(x)


@dataclasses.dataclass(frozen=True)
class PretrainedTextEncoder:
  """A frozen pretrained encoder: `apply(params, ids, mask) -> (B, L, width)` is jit-safe.

  `identity` says what produced its features (architecture, compute dtype, a hash of every
  weight, the tokenizer): a cache of them is keyed by `fingerprint()`.
  """

  params: Any
  apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
  width: int
  tokenizer: Any
  max_len: int
  model_type: str
  identity: Any = None

  def fingerprint(self) -> str:
    meta = json.dumps(
        {"identity": self.identity, "max_len": self.max_len}, sort_keys=True
    )
    return hashlib.sha256(meta.encode()).hexdigest()[:16]


# A received run's hub names resolve from the local cache alone within this
# (utils/hub.py); kept here for the callers that know it by this name.
local_files_only = hub.local_files_only


def _config(path: str):
  from transformers import AutoConfig  # Imported lazily: transformers is slow to import.

  try:
    return AutoConfig.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"text_encoder.name={path!r}: cannot read its config.json ({e}); give a local CLIP "
        "text model or T5 encoder folder"
    ) from None


def _tokenizer_hash(tokenizer) -> str:
  """What turns a caption into ids: the fast tokenizer's whole pipeline, else its vocabulary."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  text = (
      backend.to_str()
      if backend is not None
      else json.dumps(sorted(tokenizer.get_vocab().items()))
  )
  text += json.dumps(
      [
          type(tokenizer).__name__,
          tokenizer.padding_side,
          tokenizer.truncation_side,
          str(tokenizer.pad_token),
      ]
  )
  return hashlib.sha256(text.encode()).hexdigest()


def _architecture(config) -> dict:
  d = config.to_dict()
  for volatile in (
      "transformers_version",
      "_name_or_path",
      "architectures",
      "torch_dtype",
      "dtype",
      "_commit_hash",
      "_attn_implementation_autoset",
  ):
    d.pop(volatile, None)
  return d


def _model_class(name_or_path: str):
  """(text config, Flax class, width, default max_len or None, model_type
  of the folder) from its config.json alone."""
  import transformers

  config = _config(name_or_path)
  model_type = config.model_type
  if model_type in _CLIP_TYPES:
    if model_type == "clip":  # A full CLIPModel folder: its text tower.
      config = config.text_config
    return (
        config,
        transformers.FlaxCLIPTextModel,
        config.hidden_size,
        config.max_position_embeddings,
        model_type,
    )
  if model_type in _T5_TYPES:
    return (
        config,
        transformers.FlaxT5EncoderModel,
        config.d_model,
        None,
        model_type,
    )
  raise ValueError(
      f"unsupported text encoder model_type {model_type!r} for {name_or_path!r}; "
      f"expected one of {_CLIP_TYPES + _T5_TYPES}"
  )


def _hidden_states(model):
  """apply(params, ids, mask) -> the last hidden states, (B, L, width)."""

  def apply(params, ids, mask):
    return model(
        input_ids=ids,
        attention_mask=mask.astype(jnp.int32),
        params=params,
        train=False,
    ).last_hidden_state

  return apply


def describe_pretrained_text_encoder(
    name_or_path: str, dtype: Dtype = jnp.float32, max_len: Optional[int] = None
) -> PretrainedTextEncoder:
  """The encoder of a folder from its config.json alone: `params` are
  `jax.ShapeDtypeStruct`s and there is no tokenizer. For compiling a step
  ahead of time (train/aot_lower.py) without the weights."""
  name_or_path = weights_lib.model_folder(name_or_path, "text_encoder.name")
  config, cls, width, default_len, model_type = _model_class(name_or_path)
  model = cls(config, dtype=jnp.dtype(dtype), _do_init=False)
  return PretrainedTextEncoder(
      params=model.params_shape_tree,
      apply=_hidden_states(model),
      width=width,
      tokenizer=None,
      max_len=max_len or default_len or _FALLBACK_MAX_LEN,
      model_type=model_type,
      identity={"architecture": _architecture(config), "weights": None},
  )


def load_pretrained_text_encoder(
    name_or_path: str, dtype: Dtype = jnp.float32, max_len: Optional[int] = None
) -> PretrainedTextEncoder:
  """`_load` once per process for the same files: `prepare` (to cache features) and the run
  both ask for the encoder, and hashing a T5-XXL's weights twice would cost tens of seconds.
  """
  name_or_path = weights_lib.model_folder(name_or_path, "text_encoder.name")
  return _load_cached(
      name_or_path, jnp.dtype(dtype).name, max_len, _files_state(name_or_path)
  )


def _files_state(path: str) -> tuple:
  """(name, size, mtime) of a folder's files: a rewritten folder is loaded again.

  `path` is local (`weights_lib.model_folder`): transformers reads it."""
  if not os.path.isdir(path):
    return ()
  out = []
  for name in sorted(os.listdir(path)):
    st = os.stat(os.path.join(path, name))
    out.append((name, st.st_size, st.st_mtime_ns))
  return tuple(out)


@functools.lru_cache(maxsize=2)
def _load_cached(name_or_path, dtype, max_len, files_state):
  del files_state  # Only part of the cache key.
  return _load(name_or_path, jnp.dtype(dtype), max_len)


def _load(
    name_or_path: str, dtype: Dtype = jnp.float32, max_len: Optional[int] = None
) -> PretrainedTextEncoder:
  """Loads a Flax CLIP text model or T5 encoder plus its tokenizer from a folder.

  Weights: `flax_model.msgpack`, else PyTorch `model.safetensors` (or its shards) converted
  with numpy (`text_encoder_weights.py`; torch is not needed). A full CLIPModel or T5 folder
  works too: only the text tower / encoder is read. `max_len` defaults to CLIP's position table
  size, or the T5 tokenizer's limit (capped at 512).
  """
  import transformers

  config, cls, width, default_len, model_type = _model_class(name_or_path)
  # _do_init=False: the weights come from disk, so no full-size random init runs on the host.
  if weights_lib.has_flax(name_or_path) or not os.path.isdir(name_or_path):
    model, params = cls.from_pretrained(
        name_or_path,
        dtype=dtype,
        _do_init=False,
        local_files_only=True,
    )
    weights_hash = weights_lib.hash_params(params)
  elif weights_lib.has_safetensors(name_or_path):
    model = cls(config, dtype=dtype, _do_init=False)
    params, weights_hash = weights_lib.load_safetensors(
        name_or_path, model.params_shape_tree
    )
  else:
    raise FileNotFoundError(
        f"text_encoder.name={name_or_path!r} has neither {weights_lib.FLAX_FILE} nor "
        f"{weights_lib.WEIGHTS_FILE}; save the model with save_pretrained(safe_serialization=True)"
    )
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      name_or_path, local_files_only=True
  )
  if default_len is None:
    limit = getattr(tokenizer, "model_max_length", None) or _FALLBACK_MAX_LEN
    default_len = min(int(limit), _FALLBACK_MAX_LEN)

  identity = {
      "model_type": model_type,
      "architecture": _architecture(model.config),
      "dtype": jnp.dtype(dtype).name,
      "weights": weights_hash,
      "tokenizer": _tokenizer_hash(tokenizer),
  }
  return PretrainedTextEncoder(
      params=params,
      apply=_hidden_states(model),
      width=width,
      tokenizer=tokenizer,
      max_len=max_len or default_len,
      model_type=model_type,
      identity=identity,
  )


class TextFeaturizer:
  """For `prepare`: a frozen encoder's token features of every caption of an example, so that
  training never runs the encoder.

  Every caption is kept, not one chosen here, because the run draws one caption per example
  and step (COCO has five): a cache of one would train on a fifth of the text. An example keeps
  at most `max_captions` (its `text_tokens` are (max_captions, max_len, width), zero-padded past
  its own captions; `prepare` drops the extra captions and counts them). The mask is not stored:
  the host tokenizes the drawn caption each step anyway, with the same tokenizer and max_len,
  which are part of the cache's key.
  """

  def __init__(
      self,
      encoder: PretrainedTextEncoder,
      max_len: int,
      max_captions: int = 5,
      dtype: str = "float16",
      batch_size: int = 64,
  ):
    if dtype not in ("float16", "float32"):
      raise ValueError(
          f"data.text_cache_dtype={dtype!r}: expected float16 or float32"
      )
    if max_captions < 1:
      raise ValueError(f"data.cache_captions={max_captions} must be >= 1")
    if max_len > encoder.max_len:
      raise ValueError(
          f"data.max_len={max_len} exceeds the text encoder's {encoder.max_len} "
          "positions; lower data.max_len"
      )
    self.encoder, self.max_len, self.max_captions = (
        encoder,
        max_len,
        max_captions,
    )
    self.dtype, self.batch_size = dtype, batch_size
    # Over this host's devices (prepare on a pod: each host its share).
    self._apply = local_parallel.LocalDataParallel(
        encoder.apply, encoder.params
    )
    self.fingerprint = {
        "text": encoder.fingerprint(),
        "text_max_len": max_len,
        "text_dtype": dtype,
        "text_captions": max_captions,
    }

  def features(self, captions: Sequence[str]) -> np.ndarray:
    """(N, max_len, width) in the cache dtype; batches padded to one shape (one compile)."""
    from txt2img_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

    ids, mask = tokenizer_lib.tokenize(
        self.encoder.tokenizer, list(captions), self.max_len
    )
    out, bs = [], self.batch_size
    for s in range(0, len(ids), bs):
      n = min(bs, len(ids) - s)
      pad = ((0, bs - n), (0, 0))
      f = self._apply(np.pad(ids[s : s + n], pad), np.pad(mask[s : s + n], pad))
      out.append(np.asarray(f[:n], self.dtype))
    return np.concatenate(out)

  def __call__(self, images_uint8, captions: Sequence[Sequence[str]]):
    del images_uint8
    caps = [list(c)[: self.max_captions] for c in captions]
    flat = self.features([c for cs in caps for c in cs])
    out = np.zeros((len(caps), self.max_captions) + flat.shape[1:], self.dtype)
    i = 0
    for b, cs in enumerate(caps):
      out[b, : len(cs)] = flat[i : i + len(cs)]
      i += len(cs)
    return {"text_tokens": out}
