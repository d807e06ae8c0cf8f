"""Deterministic, shardable, step-resumable input pipeline over any data set.

`data` is what a data source prepares (`sources.prepare`): it has
`as_data_source(split)` (random access by record index), `decode_transform()`
(a record to `image` float32 in [0, 1] plus `caption` or `captions`) and
`vocabulary()` (words for the embedded word tokenizer).

The training stream is a random-access grain `MapDataset` whose element `s` is
this host's batch for step `s`, a pure function of (seed, s). So resuming needs
no saved iterator state: a run restored at step `s` asks for batches from `s`.

How the global stream is laid out (G the global batch, P hosts, b = G/P):
  records --shuffle(seed), reshuffled every epoch--> repeat forever
          --decode, caption drawn from (seed, global position)-->
          --chunks of b consecutive elements-->
          --host p takes chunks p, p + P, p + 2P, ...-->
Host p's batch s is then global elements sG + pb + k (k < b): the rows the
mesh gives host p's devices (devices are ordered by host along 'data'). So
the global batch at step s is elements [sG, (s+1)G) in order, the same
array whatever P, and a run on 2 hosts trains on exactly the batches of a
run on 1. Each host decodes only its own chunks.

A batch is a dict of numpy arrays: `image` float32 (B, S, S, 3) in [0, 1],
`ids`, `mask` int32 (B, L), with hard negatives (`word_classes` given)
`neg_ids`, `neg_mask` int32 (B, L) of a caption that says something else
(`negatives.py`), and whatever else the data's decode gives (the
shapes set: its structure; prepared data: cached frozen features). Captions
stay on the host (strings don't go to devices); `load_split` returns them for
evaluation.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from absl import logging
import grain
import jax
import numpy as np

from txt2img_jax.data import negatives as negatives_lib
from txt2img_jax.data import tokenizer as tokenizer_lib

DEFAULT_MAX_LEN = 32  # The longest shapes caption is 22 words + BOS/EOS.
# Arrays with one row per caption of an example (a frozen text encoder's
# features cached by `prepare`): the caption drawn picks its row.
PER_CAPTION_KEYS = ("text_tokens",)


class ChooseCaption(grain.transforms.RandomMap):
  """An example with several captions (COCO has five) trains on one of them,
  drawn from (seed, position in the stream): the same at every resume."""

  def random_map(
      self, element: dict[str, Any], rng: np.random.Generator
  ) -> dict[str, Any]:
    if "captions" not in element:
      return element
    element = dict(element)
    captions = element.pop("captions")
    i = int(rng.integers(len(captions)))
    element["caption"] = captions[i]
    for key in PER_CAPTION_KEYS:
      if key in element:
        element[key] = element[key][i]
    return element


class NegativeCaption(grain.transforms.RandomMap):
  """Adds `neg_caption` (`negatives.negative_caption`), drawn from
  (seed, position in the stream) like the caption itself; a caption with
  no word to change gets itself, which its loss then masks out."""

  def __init__(
      self, word_classes: Sequence[Sequence[str]], forbidden: Sequence[str] = ()
  ):
    self._classes = tuple(tuple(g) for g in word_classes)
    self._forbidden = tuple(forbidden)

  def random_map(
      self, element: dict[str, Any], rng: np.random.Generator
  ) -> dict[str, Any]:
    element = dict(element)
    caption = str(element["caption"])
    neg = negatives_lib.negative_caption(
        caption, self._classes, rng, self._forbidden
    )
    element["neg_caption"] = caption if neg is None else neg
    return element


class TokenizeCaptions(grain.transforms.Map):
  """On a batch: replaces `caption` (B,) with `ids` and `mask`, (B, L) int32
  (and `neg_caption`, when present, with `neg_ids` and `neg_mask`).

  Tokenizing a batch in one call is ~4x cheaper than example by example.
  """

  def __init__(self, tokenizer, max_len: int):
    self._tokenizer = tokenizer
    self._max_len = max_len

  def map(self, batch: dict[str, Any]) -> dict[str, Any]:
    batch = dict(batch)
    captions = [str(c) for c in batch.pop("caption")]
    batch["ids"], batch["mask"] = tokenizer_lib.tokenize(
        self._tokenizer, captions, self._max_len
    )
    if "neg_caption" in batch:
      negs = [str(c) for c in batch.pop("neg_caption")]
      batch["neg_ids"], batch["neg_mask"] = tokenizer_lib.tokenize(
          self._tokenizer, negs, self._max_len
      )
    return batch


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} must be a positive multiple "
        f"of the process count {process_count}."
    )
  return global_batch_size // process_count


def _shuffle_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e; hashing the user's seed keeps
  # seeds 0 and 1 from replaying each other's epochs one apart.
  return int(np.random.SeedSequence([seed, 0x5A4E]).generate_state(1)[0])


def _source(data, split: str, subset_size: int | None) -> grain.MapDataset:
  ds = grain.MapDataset.source(data.as_data_source(split=split))
  if subset_size is not None:
    if not 0 < subset_size <= len(ds):
      raise ValueError(
          f"subset_size={subset_size} must be in [1, {len(ds)}] (the size of "
          f"split {split!r})."
      )
    ds = ds[:subset_size]
  return ds


def train_dataset(
    data,
    *,
    tokenizer,
    max_len: int,
    global_batch_size: int,
    seed: int,
    split: str = "train",
    subset_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    word_classes: Sequence[Sequence[str]] | None = None,
    forbidden: Sequence[str] = (),
    example_offset: int = 0,
) -> grain.MapDataset:
  """Random-access batches: element s is this host's batch for step s.

  With `example_offset`, element 0 is the batch that starts at that example
  of the shuffled stream (a run whose batch size changed goes on where its
  stream stopped; `train/changes.py`).

  `process_index`/`process_count` default to JAX's; tests pass them to act as
  several hosts. `subset_size` keeps the first N records of the split (the
  overfit check trains on 512). `word_classes` adds a hard-negative caption
  to every example (`NegativeCaption`; none says a `forbidden` phrase).
  """
  process_index = (
      jax.process_index() if process_index is None else process_index
  )
  process_count = (
      jax.process_count() if process_count is None else process_count
  )
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index {process_index} is not in " f"[0, {process_count})."
    )
  batch_size = host_batch_size(global_batch_size, process_count)
  ds = _source(data, split, subset_size)
  if len(ds) < global_batch_size:
    raise ValueError(
        f"Split {split!r} has {len(ds)} examples (subset_size={subset_size}), "
        f"fewer than the global batch size {global_batch_size}."
    )
  ds = ds.shuffle(seed=_shuffle_seed(seed)).repeat()  # Infinite, per-epoch.
  ds = ds.map(data.decode_transform())
  # Drawn before the hosts split the stream, so a caption depends on the
  # example's global position, not on how many hosts there are.
  ds = ds.random_map(ChooseCaption(), seed=_shuffle_seed(seed + 1))
  if word_classes:
    ds = ds.random_map(
        NegativeCaption(word_classes, forbidden), seed=_shuffle_seed(seed + 2)
    )
  if example_offset:
    ds = ds[example_offset:]
  # Lazy: a host's chunk is read and decoded only when that host asks.
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds[process_index::process_count]
  return ds.map(TokenizeCaptions(tokenizer, max_len))


def make_train_iterator(
    data,
    *,
    tokenizer,
    max_len: int,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    split: str = "train",
    subset_size: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 4,
    prefetch_batches: int = 4,
    worker_count: int = 0,
    word_classes: Sequence[Sequence[str]] | None = None,
    forbidden: Sequence[str] = (),
    start_example: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator over this host's batches for steps start_step, +1, ...

  `start_example`: the stream's example where `start_step`'s batch begins,
  when it is not `start_step * global_batch_size` (a changed batch size).

  Loading overlaps compute: `read_threads` threads build up to
  `prefetch_batches` batches ahead. `worker_count > 0` moves that work to
  processes (needs absl flags parsed in the main program; slow to start).
  """
  ds = train_dataset(
      data,
      tokenizer=tokenizer,
      max_len=max_len,
      global_batch_size=global_batch_size,
      seed=seed,
      split=split,
      subset_size=subset_size,
      process_index=process_index,
      process_count=process_count,
      word_classes=word_classes,
      forbidden=forbidden,
      example_offset=start_example or 0,
  )
  if start_example is not None:
    start_step = 0  # The offset already stands at start_step's batch.
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  logging.info(
      "Input: split %s (%s examples), global batch %d, seed %d, "
      "from step %d, %d read threads, %d workers.",
      split,
      subset_size or "all",
      global_batch_size,
      seed,
      start_step,
      read_threads,
      worker_count,
  )
  it = ds[start_step:].to_iter_dataset(
      grain.ReadOptions(
          num_threads=read_threads, prefetch_buffer_size=prefetch_batches
      )
  )
  if worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it)


def load_split(
    data,
    split: str,
    num: int | None = None,
    *,
    tokenizer=None,
    max_len: int = DEFAULT_MAX_LEN,
) -> dict[str, Any]:
  """The first `num` examples of a split (all if None), in record order.

  Returns the batch arrays plus `caption` (a list of str) and `index` (int32,
  the record index, so example i is `shapes.example(seed, split, i)`).
  Without a tokenizer, the data's own word tokenizer is used. An example
  with several captions is scored on its first.
  """
  source = data.as_data_source(split=split)
  num = len(source) if num is None else num
  if not 0 < num <= len(source):
    raise ValueError(
        f"Asked for {num} examples of split {split!r}, which "
        f"has {len(source)}."
    )
  if tokenizer is None:
    tokenizer = tokenizer_lib.build_word_tokenizer(data.vocabulary(), max_len)
  decode = data.decode_transform()
  records = [decode.map(source[i]) for i in range(num)]
  for r in records:
    if "captions" in r:
      r["caption"] = r.pop("captions")[0]
      for key in PER_CAPTION_KEYS:
        if key in r:
          r[key] = r[key][0]
  out = {
      k: np.stack([r[k] for r in records]) for k in records[0] if k != "caption"
  }
  out["caption"] = [r["caption"] for r in records]
  out["ids"], out["mask"] = tokenizer_lib.tokenize(
      tokenizer, out["caption"], max_len
  )
  out["index"] = np.arange(num, dtype=np.int32)
  return out
