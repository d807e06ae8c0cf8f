"""Structure benchmark: scores generated images against the captions' descriptions.

Pure numpy/scipy (no JAX). Given images (N, S, S, 3) (uint8, or float in
[0, 1]) and the structured descriptions behind their captions (the dict of
`shapes.describe` arrays with a leading N axis), `score` reports for every
described object whether its colour, shape, position (3x3 cell) and size are
right, and for every image a *mosaic index* that is ~0 for one coherent shape
per object and rises when the drawing breaks into fragments, stray colours or
high-frequency blocks: the failure mode where colour statistics are learned but
shapes never form. See docs/benchmark.md for the formulas and the calibration.

Public API:
  score(images, descriptions) -> dict of per-object (N, MAX_OBJECTS) and
      per-image (N,) arrays.
  summarize(scores) -> dict[str, float]
  summarize_splits({split: scores}) -> {"split/metric": float}
  format_table(summary) -> str
  calibrate(num=500, seed=0, image_size=32) -> dict

The code lives in modules that import one way only: this package's face ->
calibration -> scoring -> pixels. `python -m txt2img_jax.benchmark` prints the
calibration tables.
"""

from __future__ import annotations

# The public API, gathered in one namespace.
# pylint: disable=unused-import
from txt2img_jax.evaluation.benchmark.calibration import (
    stack_examples,
    blur,
    calibrate,
    calibration_table,
    chance_levels,
    perturbations,
    render_hard_edges,
    shuffle_blocks,
    shuffle_pixels,
)
from txt2img_jax.evaluation.benchmark.pixels import (
    AMBIGUOUS_CLASS,
    BACKGROUND_CLASS,
    COLOR_DIST,
    MIN_COVERAGE,
    class_colors,
    classify_pixels,
    expected_areas,
    laplacian_energy,
    quantize,
)
from txt2img_jax.evaluation.benchmark.scoring import (
    BY_COUNT_KEYS,
    HF_SCALE,
    MIN_BLOB_FRAC,
    MIN_SHAPE_IOU,
    PER_IMAGE_KEYS,
    PER_OBJECT_KEYS,
    PRESENT_FRAC,
    SUMMARY_KEYS,
    TEMPLATE_SIGMAS,
    format_confusion,
    format_table,
    score,
    shape_confusion,
    summarize,
    summarize_splits,
)

# pylint: enable=unused-import
from txt2img_jax.data import shapes
