"""A user's data once prepared (`records.py`), as the input pipeline and the
evaluators see a data set: `as_data_source(split)`, `decode_transform()`,
`vocabulary()`, `split_size(split)` and `EVAL_SPLITS`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grain
import numpy as np

from txt2img_jax.data import records
from txt2img_jax.utils import paths

VOCAB_FILE = "vocab.json"
# Words for the embedded word tokenizer: the same split as its pre-tokenizer
# (\w+ runs and runs of punctuation), lower-cased.
_WORDS = re.compile(r"\w+|[^\w\s]+")


def count_words(captions) -> list[str]:
  """The words of the captions, most frequent first (ties by spelling),
  without the tokenizer's special tokens."""
  counts: dict[str, int] = {}
  for caption in captions:
    for w in _WORDS.findall(caption.lower()):
      counts[w] = counts.get(w, 0) + 1
  words = sorted(counts, key=lambda w: (-counts[w], w))
  return [w for w in words if w not in ("[pad]", "[unk]", "[bos]", "[eos]")]


def cached_vocabulary(out_dir: str, captions) -> list[str]:
  """`count_words(captions())`, computed once and kept in out_dir."""
  path = paths.join(out_dir, VOCAB_FILE)
  if paths.exists(path):
    return json.loads(paths.read_text(path))
  words = count_words(captions())
  paths.write_text(path, json.dumps(words))  # Whole or not at all.
  return words


class DecodePrepared(grain.transforms.Map):
  """Record bytes -> image float32 in [0, 1], all captions, cached features."""

  def map(self, element: bytes) -> dict[str, Any]:
    out = records.decode_record(element)
    out.pop("index")
    return out


class PreparedData:
  """A prepared directory: splits `train` and `val`."""

  EVAL_SPLITS = {"val": "val"}
  DEFAULT_EVALUATOR = "prompts"

  def __init__(self, out_dir: str, report: dict | None = None):
    self.out_dir = out_dir
    self.report = report or {}
    self.manifest = records.load_manifest(out_dir)

  def as_data_source(self, split: str) -> records.PreparedSource:
    return records.PreparedSource(self.out_dir, split)

  def decode_transform(self) -> DecodePrepared:
    return DecodePrepared()

  def split_size(self, split: str) -> int:
    return int(self.manifest["splits"].get(split, {}).get("num_records", 0))

  def vocabulary(self) -> list[str]:
    """Every word of the train captions, most frequent first (computed once
    and kept beside the records)."""
    source = self.as_data_source("train")
    return cached_vocabulary(
        self.out_dir,
        lambda: (
            c
            for i in range(len(source))
            for c in records.read_record(source[i])["captions"]
        ),
    )

  def extras(self) -> dict[str, Any]:
    return self.manifest.get("extras", {})


def stack_images(data: PreparedData, split: str, num: int) -> np.ndarray:
  source = data.as_data_source(split)
  return np.stack(
      [
          records.decode_image_uint8(source[i])
          for i in range(min(num, len(source)))
      ]
  )
