"""Does a spatial prior in the text head fix the mosaic? The head ablation.

  python -m txt2img_jax.experiments.heads_ablation [--steps=800] [--seeds=0,1]
      [--num=200] [--workroot=workdirs/ablation]
      [--out=docs/heads_ablation_table.md]

Trains the recommended recipe (configs/restart.py) with each text head —
pooled_mlp, token_transformer, grid_query, mlp_conv, and grid_query with the
TV penalty — at the same budget, data and seeds; everything else is equal
(the TV weight is 0 except in the +TV row). Scores every run with the
structure benchmark and writes the table (with text-head parameter counts and
train steps/s) and one sample grid per head into the docs. Runs already
finished in the workroot are reused, so an interrupted ablation resumes.

The budget is the recipe's own (800 steps, one SGDR cycle). A different
--steps rescales the recipe's step-based schedules (the LR cycle and the
time-sampling blend) so that every run still ends its cycle on its last step.
Runs go seed-major (every head with the first seed, then the next seed), so a
stopped ablation has a complete first column before any second one.
"""

from __future__ import annotations

import os
import shutil

from absl import flags
from absl import logging
import numpy as np

from txt2img_jax import config_lib
from txt2img_jax import reporting
from txt2img_jax.experiments import common

ROWS = (
    ("pooled_mlp", "pooled_mlp", 0.0),
    ("token_transformer", "token_transformer", 0.0),
    ("grid_query", "grid_query", 0.0),
    ("mlp_conv", "mlp_conv", 0.0),
    ("grid_query + TV", "grid_query", None),  # None: the recipe's TV weight.
)
METRICS = ("object_acc", "shape_acc", "position_acc", "color_acc",
           "size_acc", "mosaic", "pixel_mse_rel")
ZTEXT = ("corr", "caption_share", "tile_repeat", "roughness")  # common.z_text_measures


def run_row(label, kind, tv, seed, steps, num, workroot):
  c = common.recipe("restart", flags.FLAGS.config_variant)
  c.head.kind = kind
  if tv is not None:
    c.loss.tv_weight = tv
  c.seed = seed
  config_lib.rescale_steps(c, steps)
  c.sample_every = steps
  c.eval_every = 0  # Scored once below, with more captions.
  c.checkpoint_every = max(1, steps // 4)  # An interrupted run resumes.
  name = f"{label.replace(' + ', '_').replace(' ', '_')}_s{seed}"
  workdir = os.path.join(workroot, name)
  common.train_once(c, workdir)
  summary = common.score(workdir, num)
  return workdir, summary


def fmt(values):
  values = np.asarray(values, float)
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{values.mean():.3f} ± {values.std():.3f}"


def main(argv):
  del argv
  reporting.quiet_orbax()
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds.split(",")]
  os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
  image_dir = os.path.join(os.path.dirname(os.path.abspath(f.out)), "images")
  os.makedirs(image_dir, exist_ok=True)
  lines = [
      "| head | params (head) | steps/s | " + " | ".join(
          f"{m} (test)" for m in METRICS) + " | object_acc (held-out) | "
      + " | ".join(f"z_text {m}" for m in ZTEXT) + " |",
      "|" + "---|" * (4 + len(METRICS) + len(ZTEXT)),
  ]
  done = {}
  rows = [r for r in ROWS if not f.heads or r[0] in f.heads.split(",")]
  if not rows:
    raise ValueError(f"--heads={f.heads!r}: pick from "
                     f"{', '.join(r[0] for r in ROWS)}")
  for seed in seeds:
    for label, kind, tv in rows:
      done[label, seed] = run_row(label, kind, tv, seed, f.steps, f.num,
                                  f.workroot)
      logging.info("%s seed %d: %s", label, seed, done[label, seed][1])
  for label, kind, tv in rows:
    results = [done[label, seed] for seed in seeds]
    first = results[0][0]
    cells = [label, f"{common.text_head_params(first) / 1e6:.2f}M",
             fmt([common.median_steps_per_sec(w) for w, _ in results])]
    for m in METRICS:
      cells.append(fmt([s[f"eval/{m}"] for _, s in results]))
    cells.append(fmt([s["heldout/object_acc"] for _, s in results]))
    for m in ZTEXT:
      cells.append(fmt([s[f"ztext/{m}"] for _, s in results]))
    lines.append("| " + " | ".join(cells) + " |")
    # Reference | decoded z_text | generated, for the first seed's run.
    grid = os.path.join(first, "samples", "z_text.png")
    if os.path.exists(grid):
      shutil.copy(grid, os.path.join(
          image_dir, f"heads_{label.replace(' + ', '_').replace(' ', '_')}.png"))
  table = "\n".join(lines)
  print(table)
  with open(f.out, "w") as fh:
    variant = (f"--config_variant={f.config_variant} " if f.config_variant
               else "")
    fh.write(f"<!-- written by python -m txt2img_jax.experiments.heads_ablation "
             f"{variant}--steps={f.steps} --seeds={f.seeds} --num={f.num} -->\n")
    fh.write(table + "\n")
  print(f"wrote {f.out}")


if __name__ == "__main__":
  from txt2img_jax import cli
  flags.DEFINE_string("config_variant", "", "Variant of every recipe, e.g. "
                      "'tiny' for a seconds-long smoke run of the script.")
  flags.DEFINE_integer("steps", 800, "Train steps per run (same budget; "
                       "the recipe's own is 800).")
  flags.DEFINE_string("seeds", "0,1", "Comma-separated seeds.")
  flags.DEFINE_string("heads", "", "Comma-separated row labels to run "
                      "(default: every row of the table).")
  flags.DEFINE_integer("num", 200, "Benchmark captions per split.")
  flags.DEFINE_string("workroot", "workdirs/ablation", "Runs go here.")
  flags.DEFINE_string("out", "docs/heads_ablation_table.md", "Markdown table.")
  cli.run(main)
