"""A run's text side: the tokenizer and, for a pretrained encoder, its frozen
weights. The embedded encoder's word vocabulary is kept in the workdir
(`vocab.json`), so a trained run rebuilds without its data."""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import text_encoder as text_encoder_lib
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles

VOCAB_FILE = runfiles.VOCAB_FILE


@dataclasses.dataclass
class TextSide:
  """The tokenizer and, for a pretrained encoder, its frozen weights."""

  tokenizer: Any
  vocab_size: int
  width: int
  frozen: text_encoder_lib.PretrainedTextEncoder | None
  frozen_params: Any


def load(
    config: ml_collections.ConfigDict, workdir: str | None, data=None
) -> TextSide:
  """The text side of a run. The embedded encoder's word vocabulary comes
  from the data and is kept in the workdir (VOCAB_FILE), so a trained run
  rebuilds without its data; runs made before that file are shapes runs."""
  name = config.text_encoder.name
  if not name:
    words = vocabulary(config, workdir, data)
    tok = tokenizer_lib.build_word_tokenizer(words, config.data.max_len)
    return TextSide(tok, len(tok), config.text_encoder.width, None, {})
  enc = text_encoder_lib.load_pretrained_text_encoder(
      name, dtype=np.dtype(config.dtype)
  )
  logging.info("frozen text encoder %s: width %d", name, enc.width)
  return TextSide(enc.tokenizer, len(enc.tokenizer), enc.width, enc, enc.params)


def vocabulary(config, workdir: str | None, data=None) -> list[str]:
  path = paths.join(workdir, VOCAB_FILE) if workdir else None
  if path and paths.exists(path):
    return runfiles.read_json(workdir, VOCAB_FILE)
  if data is not None:
    words = list(data.vocabulary())
  elif config.data.name == "shapes":
    words = shapes.vocabulary()
  else:
    raise FileNotFoundError(
        f"{path or 'no workdir'}: the run's word vocabulary is missing"
    )
  if path and jax.process_index() == 0:
    runfiles.write_json(workdir, VOCAB_FILE, words)
  return words


def check_cache(config, data, text: TextSide) -> None:
  """Cached text features are read only if this run's encoder made them.

  The prepared directory is already named by the encoder's fingerprint, so
  this fails only if data and encoder were put together by hand; a stale
  cache must then stop the run, not train it on another encoder's features.
  """
  extras = getattr(data, "extras", lambda: {})()
  if "text_tokens" not in extras:
    return
  where = getattr(data, "out_dir", "the prepared data")
  if text.frozen is None:
    raise ValueError(
        f"{where} holds cached text features, but this run "
        "trains its own text encoder; prepare without "
        "data.cache_text, or set text_encoder.name"
    )
  made_by = data.manifest["fingerprint"]["featurize"].get("text")
  if made_by != text.frozen.fingerprint():
    raise ValueError(
        f"{where} holds text features of another encoder "
        f"({made_by}, this run's is "
        f"{text.frozen.fingerprint()}); prepare again with "
        "--config.data.rebuild=True"
    )
  shape = tuple(extras["text_tokens"]["shape"][1:])
  if shape != (config.data.max_len, text.width):
    raise ValueError(
        f"{where}: cached text features are {shape} per "
        f"caption, this run needs ({config.data.max_len}, "
        f"{text.width}); prepare again with "
        "--config.data.rebuild=True"
    )
