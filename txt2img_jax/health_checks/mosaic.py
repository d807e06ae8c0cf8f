"""The mosaic health check: does a trained run draw images as smooth as its data?

The seed's failure is samples that are mosaics of colour blocks while the loss falls. On a
user's data nothing knows what an image should show, but a mosaic has its own signature: the
image changes more across the token grid's lines than inside tokens (`blockiness.py`). This
check draws the run's samples (EMA parameters, the run's sampler) for held-out captions and
judges their blockiness against the run's own training images: PASS when it is at most
MOSAIC_BLOCKINESS times theirs. It also writes `mosaic.png` (real | generated, one pair a
column) and `mosaic.json` into the run's workdir.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from txt2img_jax.evaluation import blockiness
from txt2img_jax.health_checks.result import Result
from txt2img_jax.utils import paths

DEFAULT_MOSAIC_NUM = 64
# Test only: score the held-out images themselves (must PASS) or them cut into token tiles
# of shuffled brightness (must FAIL) in place of the run's samples.
PROBES = ("", "real", "tiled")


def _held_out_split(data) -> str:
  for split in ("val", "test"):  # A user's data | the shapes set.
    try:
      if data.split_size(split):
        return split
    except KeyError:
      continue
  raise ValueError(
      "the run's data has no val or test split to draw captions from"
  )


def run_mosaic(
    workdir: str, num: int = DEFAULT_MOSAIC_NUM, probe: str = ""
) -> Result:
  from txt2img_jax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from txt2img_jax.evaluation import structure
  from txt2img_jax.evaluation import prompts as evaluate_prompts
  from txt2img_jax.data import pipeline

  if probe not in PROBES:
    raise ValueError(f"probe={probe!r}: expected one of {PROBES[1:]} or none")
  if not workdir:
    raise ValueError("the mosaic check needs --workdir=W, a trained run")
  run = run_lib.load_run(workdir)
  c = run.config
  data, tok = run.builder, run.text.tokenizer
  ref = evaluate_prompts.mosaic_reference(
      c, data, run.parts.latent_shape[0], tok
  )
  if ref is None:
    raise ValueError(
        f"a token spans the {c.data.image_size}-pixel image: no token grid to "
        "measure"
    )
  period = ref.period
  split = _held_out_split(data)
  held = pipeline.load_split(
      data,
      split,
      min(num, data.split_size(split)),
      tokenizer=tok,
      max_len=c.data.max_len,
  )
  if probe == "real":
    images = held["image"]
  elif probe == "tiled":
    images = blockiness.tiled(held["image"], period, np.random.default_rng(0))
  else:
    images = structure.generate_images(
        run.generate,
        run.ema_params,
        run.frozen,
        run.stats,
        c.sample,
        held["ids"],
        held["mask"],
        c.eval.batch_size,
    )
  images = np.clip(np.asarray(images, np.float64), 0.0, 1.0)
  scores = ref.score(images)
  real_scores = ref.score(held["image"])
  passed = scores["blockiness"] <= blockiness.MOSAIC_BLOCKINESS
  numbers = {
      "step": run.step,
      "num": len(images),
      "split": split,
      "period": period,
      "probe": probe,
      **scores,
      "real_blockiness": real_scores["blockiness"],
      "real_hf": real_scores["hf"],
      "threshold": blockiness.MOSAIC_BLOCKINESS,
  }
  paths.write_text(
      paths.join(run.workdir, "mosaic.json"), json.dumps(numbers, indent=1)
  )
  _save_pairs(
      held["image"][:16], images[:16], paths.join(run.workdir, "mosaic.png")
  )
  verdict = (
      "as smooth as the data" if passed else "a mosaic of token-sized blocks"
  )
  reason = (
      f"blockiness {scores['blockiness']:.2f}× the training images' on {len(images)} "
      f"{split} captions (limit {blockiness.MOSAIC_BLOCKINESS}; the {split} images "
      f"themselves {real_scores['blockiness']:.2f}×), hf {scores['hf']:.2f}×: {verdict}"
  )
  return Result("mosaic", passed, reason, numbers)


def _save_pairs(
    real: np.ndarray, generated: np.ndarray, path: str, scale: int = 2
) -> None:
  pairs = np.concatenate([real, generated], axis=1)  # Real above generated.
  row = np.concatenate(list(pairs), axis=1)
  img = Image.fromarray((np.clip(row, 0, 1) * 255).round().astype(np.uint8))
  big = img.resize(
      (img.width * scale, img.height * scale), Image.Resampling.NEAREST
  )
  paths.write_with(path, big.save, format="PNG")
