"""The structure benchmark of a run on the shapes world: the evaluator the
training loop calls, and the sampling and grid helpers the other evaluators
and checks share. Its command is `python -m txt2img_jax.evaluate`.

It samples captions of the test split and of the held-out colour-shape
pairings from the EMA parameters and scores them with
`evaluation.benchmark`.
"""

from __future__ import annotations

import io
import time

from absl import logging
import jax
import numpy as np
from PIL import Image, ImageDraw

from txt2img_jax.evaluation.batched import generate_images  # pylint: disable=unused-import
from txt2img_jax.evaluation.benchmark import scoring as benchmark
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.data import pipeline
from txt2img_jax.data import tfds_shapes


class Evaluator:
  """Sample grids and structure-benchmark scores (the shapes set's splits
  with known structure) from a set of (EMA) parameters."""

  def __init__(
      self, config, workdir, builder, text, generate, frozen, stats, writer=None
  ):
    self.config = config
    self.workdir = workdir
    self.generate = generate
    self.frozen = frozen
    self.stats = stats
    self.writer = writer
    self.shape_confusion = {}  # Of the last benchmark, per split.
    n = max(config.eval.num, config.sample.grid_size)
    if not hasattr(builder, "EVAL_SPLITS") or "heldout" not in (
        builder.EVAL_SPLITS
    ):
      raise ValueError(
          "eval.kind='structure' scores drawings against the "
          "structure of the shapes set; other data uses "
          "eval.kind='prompts'"
      )
    self.data = {
        prefix: pipeline.load_split(
            builder,
            split,
            min(n, builder.split_size(split)),
            tokenizer=text.tokenizer,
            max_len=config.data.max_len,
        )
        for prefix, split in builder.EVAL_SPLITS.items()
    }

  def images(self, params, data, num, seed=0, **overrides) -> np.ndarray:
    """Generated images (num, S, S, 3) in [0, 1] for the first num captions."""
    return generate_images(
        self.generate,
        params,
        self.frozen,
        self.stats,
        self.config.sample,
        data["ids"][:num],
        data["mask"][:num],
        self.config.eval.batch_size,
        seed,
        **overrides,
    )

  def sample_grid(self, params, step: int) -> str:
    n = self.config.sample.grid_size
    data = self.data["eval"]
    n = min(n, len(data["caption"]))
    images = self.images(params, data, n)
    grid = caption_grid(data["image"][:n], images, data["caption"][:n])
    return save_grid(grid, self.workdir, step, self.writer)

  def benchmark(
      self, params, step: int | None = None, num: int | None = None
  ) -> dict[str, float]:
    num = num or self.config.eval.num
    t0 = time.perf_counter()
    summaries, pixel_errors = {}, {}
    self.shape_confusion = {}
    for prefix, data in self.data.items():
      n = min(num, len(data["caption"]))
      images = self.images(params, data, n, seed=1)
      desc = {k: data[k][:n] for k in tfds_shapes.DESCRIPTION_KEYS}
      summaries[prefix] = benchmark.score(images, desc)
      self.shape_confusion[prefix] = benchmark.shape_confusion(
          summaries[prefix], desc
      )
      pixel_errors[f"{prefix}/pixel_mse_rel"] = pixel_mse_rel(
          images, data["image"][:n]
      )
      if self.writer is not None and step is not None and prefix == "eval":
        grid = caption_grid(data["image"][:8], images[:8], data["caption"][:8])
        self.writer.write_images(
            step, {"eval/examples": np.asarray(grid)[None]}
        )
    flat = benchmark.summarize_splits(summaries)
    flat.update(pixel_errors)
    logging.info(
        "structure benchmark%s (%.1f s):\n%s",
        f" at step {step}" if step is not None else "",
        time.perf_counter() - t0,
        benchmark.format_table(flat),
    )
    if step is not None:
      if self.writer is not None:
        self.writer.write_scalars(step, flat)
      if jax.process_index() == 0:
        runfiles.append_metrics(self.workdir, {"step": step, **flat})
    return flat

  def evaluate(self, params, step: int | None = None) -> dict[str, float]:
    return self.benchmark(params, step)


def save_grid(grid, workdir: str, step: int, writer=None) -> str:
  """samples/step_N.png and samples/latest.png (and TensorBoard), host 0."""
  path = paths.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index() == 0:
    paths.makedirs(paths.dirname(path))
    png = io.BytesIO()
    grid.save(png, format="PNG")
    for name in (path, paths.join(workdir, "samples", "latest.png")):
      paths.write_bytes(name, png.getvalue())
    if writer is not None:
      writer.write_images(step, {"samples": np.asarray(grid)[None]})
    logging.info("sample grid: %s", path)
  return path


def pixel_mse_rel(images: np.ndarray, references: np.ndarray) -> float:
  """Pixel MSE against the reference renders, relative to the MSE of
  predicting the mean reference image: 1 = no better than the mean image,
  0 = exact. More sensitive than the scorer early in training, when the
  drawings are too faint for any object to count."""
  references = np.asarray(references, np.float32)
  if references.dtype == np.uint8:
    references = references / 255.0
  err = np.mean((np.asarray(images, np.float32) - references) ** 2)
  base = np.mean((references.mean(0, keepdims=True) - references) ** 2)
  return float(err / max(base, 1e-12))


def caption_grid(
    references: np.ndarray | None,
    images: np.ndarray,
    captions: list[str],
    scale: int = 4,
    columns: int = 4,
    between: np.ndarray | None = None,
) -> Image.Image:
  """Reference | generated pairs with their caption underneath, as one image.

  `between`, when given, is a third image per caption drawn between the two
  (e.g. the decoded z_text the flow starts from). Without `references`,
  only the generated images (a prompt has no reference).
  """
  n = len(images)
  s = images.shape[1] * scale
  text_h = 44
  panels = (1 if references is None else 2) + (between is not None)
  cell_w, cell_h = panels * s + 2 * panels + 2, s + text_h
  rows = (n + columns - 1) // columns
  canvas = Image.new(
      "RGB", (columns * cell_w + 6, rows * cell_h + 6), (255, 255, 255)
  )
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    r, c = divmod(i, columns)
    x, y = 6 + c * cell_w, 6 + r * cell_h
    row = (
        ([] if references is None else [references[i]])
        + ([] if between is None else [between[i]])
        + [images[i]]
    )
    for j, img in enumerate(row):
      arr = np.asarray(img)
      if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
      tile = Image.fromarray(arr).resize((s, s), Image.NEAREST)
      canvas.paste(tile, (x + j * (s + 2), y))
    draw.multiline_text(
        (x, y + s + 1),
        _wrap(captions[i], max(2, panels) * s // 6),
        fill=(0, 0, 0),
    )
  return canvas


def _wrap(text: str, width: int) -> str:
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}".strip()
  lines.append(line)
  return "\n".join(lines[:3])
