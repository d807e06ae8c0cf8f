"""Word-level tokenizer for the closed caption vocabulary, and one `tokenize`.

The shapes captions use a few dozen words, so a word-level vocabulary is
exact: no sub-word pieces for the text encoder to assemble. It is wrapped as a
`transformers.PreTrainedTokenizerFast` so that it and a pretrained tokenizer
(CLIP, T5) are called the same way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors
import transformers

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
# PAD is 0 so that a zero-initialised id array is all padding.
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def build_word_tokenizer(
    vocab: Sequence[str], max_len: int
) -> transformers.PreTrainedTokenizerFast:
  """A lower-casing word-level tokenizer: `[BOS] words... [EOS] [PAD]...`.

  Words are split on whitespace and punctuation (so "left," is "left" ","),
  and words outside `vocab` become [UNK].
  """
  words = [w.lower() for w in vocab]
  duplicates = sorted({w for w in words if words.count(w) > 1})
  if duplicates:
    raise ValueError(f"Vocabulary has duplicate words: {duplicates}")
  clash = set(words) & {t.lower() for t in SPECIAL_TOKENS}
  if clash:
    raise ValueError(f"Vocabulary words clash with special tokens: {clash}")
  token_to_id = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + words)}

  tok = tokenizers.Tokenizer(models.WordLevel(token_to_id, unk_token=UNK))
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFKC(), normalizers.Lowercase()]
  )
  # Whitespace() splits on \w+|[^\w\s]+, which separates punctuation.
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A {EOS}",
      special_tokens=[(BOS, token_to_id[BOS]), (EOS, token_to_id[EOS])],
  )
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token=PAD,
      unk_token=UNK,
      bos_token=BOS,
      eos_token=EOS,
      model_max_length=max_len,
      padding_side="right",
      truncation_side="right",
      model_input_names=["input_ids", "attention_mask"],
  )


def tokenize(
    tokenizer, texts: Sequence[str], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask, both int32 (B, max_len), padded right.

  Works for any `transformers` tokenizer with a pad token: this module's word
  tokenizer, CLIP's or T5's. Longer texts are cut to `max_len` tokens (the
  tokenizer keeps its end-of-sequence token where it adds one).
  """
  if isinstance(texts, str):
    raise TypeError("`texts` must be a sequence of strings, not one string.")
  out = tokenizer(
      list(texts),
      padding="max_length",
      truncation=True,
      max_length=max_len,
      return_tensors="np",
  )
  return (
      out["input_ids"].astype(np.int32),
      out["attention_mask"].astype(np.int32),
  )
