"""Hard-negative captions: a caption changed to describe another image.

Light (no grain, no TFDS): the input pipeline draws one per example when
loss.hard_negatives is on, and `perf` builds its synthetic batch with it.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

WORD = re.compile(r"[A-Za-z]+")


def negative_caption(
    caption: str,
    word_classes: Sequence[Sequence[str]],
    rng: np.random.Generator,
    forbidden: Sequence[str] = (),
) -> str | None:
  """The caption with its words changed so that it describes another image.

  `word_classes` are groups of words that can stand in for one another
  (the shapes set: colours, shapes, sizes, top/bottom, left/right). When
  the caption has two different words of one group ("a red circle ... a
  blue square") two of them trade places, which keeps every attribute and
  changes only which object has it: the negative a bag of attributes cannot
  tell apart. Otherwise one word is replaced by another of its group. A
  result containing a `forbidden` phrase (the shapes set's held-out
  colour-shape pairings, which training must never show) is not drawn.
  None when no change is possible.
  """
  group_of = {w: g for g, words in enumerate(word_classes) for w in words}
  found = [
      (m.start(), m.end(), m.group(), group_of[m.group()])
      for m in WORD.finditer(caption)
      if m.group() in group_of
  ]

  def rebuild(words):
    out, last = [], 0
    for (start, end, _, _), word in zip(found, words):
      out += [caption[last:start], word]
      last = end
    return "".join(out + [caption[last:]])

  def allowed(text):
    return not any(re.search(rf"\b{re.escape(p)}\b", text) for p in forbidden)

  words = [f[2] for f in found]
  swaps, replacements = [], []
  for i in range(len(found)):
    for j in range(i + 1, len(found)):
      if found[i][3] == found[j][3] and words[i] != words[j]:
        w = list(words)
        w[i], w[j] = w[j], w[i]
        swaps.append(rebuild(w))
    for other in word_classes[found[i][3]]:
      if other != words[i]:
        w = list(words)
        w[i] = other
        replacements.append(rebuild(w))
  for candidates in (swaps, replacements):
    candidates = [c for c in candidates if allowed(c)]
    if candidates:
      return candidates[int(rng.integers(len(candidates)))]
  return None


def parse_word_classes(spec: str) -> tuple[tuple[str, ...], ...]:
  """`loss.hard_negative_words`: "circle,square,triangle;red,blue" -> groups
  of words that stand in for one another (';' between groups, ',' between
  words). A group needs two different words, each a plain word."""
  groups = []
  for part in spec.split(";"):
    words = tuple(w.strip() for w in part.split(",") if w.strip())
    bad = [w for w in words if not WORD.fullmatch(w)]
    if bad:
      raise ValueError(
          f"loss.hard_negative_words={spec!r}: {bad[0]!r} is not "
          "a word (letters only; ',' between words, ';' between "
          "groups)"
      )
    if len(set(words)) < 2:
      raise ValueError(
          f"loss.hard_negative_words={spec!r}: the group "
          f"{part.strip()!r} needs two different words"
      )
    groups.append(words)
  seen = [w for g in groups for w in g]
  twice = sorted({w for w in seen if seen.count(w) > 1})
  if twice:
    raise ValueError(
        f"loss.hard_negative_words={spec!r}: {twice[0]!r} is in "
        "more than one place"
    )
  return tuple(groups)


def words_not_named(data_name: str) -> ValueError:
  """The error for hard negatives on a data set that names no
  interchangeable words, with none named in the config either."""
  return ValueError(
      f"loss.hard_negatives: data.name={data_name!r} does not say which "
      "caption words can stand in for one another: name them in "
      "loss.hard_negative_words (e.g. 'cat,dog;red,blue') or set "
      "loss.hard_negatives=False"
  )
