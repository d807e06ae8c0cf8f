"""The captioned-shapes world: a procedural, deterministic text-to-image data set.

Every example is 1-2 flat shapes on a black background, each described by
(shape, colour, size, cell) with the cell one of a 3x3 grid. The structured
description travels with the caption, so any image generated from that caption
can be scored against what it should show (see `txt2img_jax.benchmark`).

Descriptions are fixed-size integer arrays so that they batch and store easily:
`shapes`, `colors`, `sizes`, `cells`, each of length MAX_OBJECTS, padded with -1,
and `num_objects`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

SHAPES = ("circle", "square", "triangle")
# Colours far apart in RGB so that a colour mask is unambiguous for the scorer.
COLORS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 215, 225),
}
COLOR_NAMES = tuple(COLORS)
COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], np.uint8)
SIZES = ("small", "large")
# Row-major 3x3 cells; each phrase reads naturally after "in the" / "at the".
CELLS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
MAX_OBJECTS = 2
BACKGROUND = (0, 0, 0)

# Colour-shape pairings never seen in the training split. They are spread so
# every colour and shape still appears in training with the other pairings.
HELDOUT_PAIRS = frozenset(
    {
        ("red", "triangle"),
        ("blue", "circle"),
        ("yellow", "square"),
    }
)

# Several phrasings, so the text encoder must parse rather than memorise.
# {obj} is "a small red circle"; {cell} is "top left".
_TEMPLATES_ONE = (
    "{obj} in the {cell}",
    "{obj} at the {cell}",
    "in the {cell} there is {obj}",
    "{obj} placed in the {cell}",
)
_JOINERS = (" and ", " with ", ", and ")


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: int
  color: int
  size: int
  cell: int


def size_pixels(image_size: int) -> tuple[float, float]:
  """Half-extent (radius) in pixels of a small and a large shape."""
  cell = image_size / 3
  return 0.30 * cell, 0.46 * cell


def cell_center(cell: int, image_size: int) -> tuple[float, float]:
  """(row, col) centre of a grid cell in pixel coordinates."""
  step = image_size / 3
  r, c = divmod(cell, 3)
  return (r + 0.5) * step, (c + 0.5) * step


def shape_mask(
    shape: int,
    center: tuple[float, float],
    radius: float,
    image_size: int,
    supersample: int = 4,
) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of one shape, (S, S) float32."""
  n = image_size * supersample
  coords = (np.arange(n) + 0.5) / supersample
  yy, xx = np.meshgrid(coords, coords, indexing="ij")
  dy, dx = yy - center[0], xx - center[1]
  name = SHAPES[shape]
  if name == "circle":
    inside = dy * dy + dx * dx <= radius * radius
  elif name == "square":
    half = radius * 0.9  # Same visual area class as the circle.
    inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
  elif name == "triangle":
    # Upright isosceles triangle inscribed in the circle's bounding box.
    top, bottom = -radius, radius * 0.9
    frac = (dy - top) / (bottom - top)
    inside = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * radius)
  else:
    raise ValueError(f"unknown shape {shape}")
  cover = inside.reshape(image_size, supersample, image_size, supersample)
  return cover.mean(axis=(1, 3)).astype(np.float32)


def render(
    objects: list[Obj], image_size: int = 32, jitter: np.ndarray | None = None
) -> np.ndarray:
  """Draws the objects in order on the background; uint8 (S, S, 3).

  `jitter`: optional (len(objects), 2) offsets in pixels of each centre.
  """
  img = np.zeros((image_size, image_size, 3), np.float32)
  img[:] = BACKGROUND
  small, large = size_pixels(image_size)
  for i, o in enumerate(objects):
    cy, cx = cell_center(o.cell, image_size)
    if jitter is not None:
      cy, cx = cy + jitter[i, 0], cx + jitter[i, 1]
    radius = large if o.size == 1 else small
    alpha = shape_mask(o.shape, (cy, cx), radius, image_size)[..., None]
    img = img * (1 - alpha) + alpha * COLOR_RGB[o.color].astype(np.float32)
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def describe(objects: list[Obj]) -> dict[str, np.ndarray]:
  """Fixed-size integer arrays for one example's objects (padded with -1)."""
  out = {
      k: np.full((MAX_OBJECTS,), -1, np.int32)
      for k in ("shapes", "colors", "sizes", "cells")
  }
  for i, o in enumerate(objects):
    out["shapes"][i] = o.shape
    out["colors"][i] = o.color
    out["sizes"][i] = o.size
    out["cells"][i] = o.cell
  out["num_objects"] = np.int32(len(objects))
  return out


def objects_from_description(desc: dict[str, np.ndarray]) -> list[Obj]:
  n = int(desc["num_objects"])
  return [
      Obj(
          int(desc["shapes"][i]),
          int(desc["colors"][i]),
          int(desc["sizes"][i]),
          int(desc["cells"][i]),
      )
      for i in range(n)
  ]


def object_phrase(o: Obj) -> str:
  return f"a {SIZES[o.size]} {COLOR_NAMES[o.color]} {SHAPES[o.shape]}"


def caption(objects: list[Obj], rng: np.random.Generator) -> str:
  parts = []
  for o in objects:
    template = _TEMPLATES_ONE[rng.integers(len(_TEMPLATES_ONE))]
    parts.append(template.format(obj=object_phrase(o), cell=CELLS[o.cell]))
  if len(parts) == 1:
    return parts[0]
  return _JOINERS[rng.integers(len(_JOINERS))].join(parts)


def is_heldout(objects: list[Obj]) -> bool:
  return any(
      (COLOR_NAMES[o.color], SHAPES[o.shape]) in HELDOUT_PAIRS for o in objects
  )


def random_objects(rng: np.random.Generator, heldout: bool | None) -> list[Obj]:
  """Draws 1-2 objects in distinct cells with distinct colours.

  heldout: True -> at least one held-out colour-shape pairing; False -> none;
  None -> no constraint. Rejection sampling: each draw is cheap.
  """
  while True:
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.choice(9, size=n, replace=False)
    colors = rng.choice(len(COLOR_NAMES), size=n, replace=False)
    objs = [
        Obj(
            int(rng.integers(len(SHAPES))),
            int(colors[i]),
            int(rng.integers(len(SIZES))),
            int(cells[i]),
        )
        for i in range(n)
    ]
    if heldout is None or is_heldout(objs) == heldout:
      return objs


SPLITS = ("train", "test", "heldout")
# Distinct seed streams per split, so the splits never share examples by seed.
_SPLIT_SEED = {"train": 0, "test": 1, "heldout": 2}


def example(
    seed: int,
    split: str,
    index: int,
    image_size: int = 32,
    jitter_px: float = 1.0,
) -> dict:
  """The `index`-th example of `split`: a pure function of its arguments."""
  rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
  objs = random_objects(rng, heldout=(split == "heldout"))
  jitter = rng.uniform(-jitter_px, jitter_px, size=(len(objs), 2))
  return {
      "image": render(objs, image_size, jitter),
      "caption": caption(objs, rng),
      **describe(objs),
  }


def examples(
    seed: int,
    split: str,
    num: int,
    image_size: int = 32,
    jitter_px: float = 1.0,
) -> Iterator[dict]:
  for i in range(num):
    yield example(seed, split, i, image_size, jitter_px)


def word_classes() -> tuple[tuple[str, ...], ...]:
  """Words that can stand in for one another in a caption (hard negatives,
  `pipeline.negative_caption`): colours, shapes, sizes, and the two axes of
  the cell phrases ("top left" <-> "bottom left", "left" <-> "right")."""
  return (COLOR_NAMES, SHAPES, SIZES, ("top", "bottom"), ("left", "right"))


def forbidden_phrases() -> tuple[str, ...]:
  """The held-out pairings as a caption says them ("red triangle"): no
  training text, hard negatives included, may contain one."""
  return tuple(sorted(f"{c} {s}" for c, s in HELDOUT_PAIRS))


def vocabulary() -> list[str]:
  """Every word a caption can contain, sorted (used to build the tokenizer)."""
  words = set()
  texts = list(_TEMPLATES_ONE) + list(_JOINERS) + list(CELLS)
  texts += list(SHAPES) + list(COLOR_NAMES) + list(SIZES) + ["a"]
  for t in texts:
    for w in t.replace(",", " , ").split():
      if not w.startswith("{"):
        words.add(w)
  return sorted(words)
