"""Real images through the folder path: scikit-learn's handwritten digits.

  python -m experiments.digits write --dir=DIR [--size=32]
  python -m experiments.digits score --workdir=W [--json=F]

`write` turns the 1,797 8x8 digits that scikit-learn ships offline into
what a user brings: PNGs (dark ink on white, upscaled bicubically to
--size) and a `metadata.jsonl` whose `text` is a list of captions ("a
handwritten digit seven", "digit 7", ...), so a run of configs/folder.py on
DIR is the README's own-images command on real data.

`table` trains (or reuses) configs/folder.py on DIR for each row of ROWS and
each seed, scores the runs and writes a markdown table (mean +- std over
seeds); an interrupted table resumes where it stopped:

  python -m experiments.digits table --data=DIR --seeds=0,1,2 \
      [--rows=before,folder,noise] [--workroot=workdirs/digits] [--out=docs/digits.md]
      [--config_variant=tiny]

`curves` prints, for trained runs, what each evaluation logged (val/flow,
val/blockiness, val/hf), so a mosaic that grows while the loss falls shows:

  python -m experiments.digits curves [--workroot=workdirs/digits]
      [--workdirs=W1,W2]

`score` judges a trained run on those digits:
  digit_acc   the fraction of samples that a digit classifier trained on
              the real digits reads as the captioned digit (the samples
              reduced to 8x8 by area averaging, as the classifier's inputs
              were; its own accuracy on held-out real digits is printed);
  blockiness  the mosaic measure against the run's real training images
  hf          (txt2img_jax/evaluation/blockiness.py), ~1 for images as smooth as the
              data;
once with z_text = the head's mean (the run's sampler) and once drawn from
the posterior. It saves a grid, one row per digit. Needs scikit-learn.

The folder and the classifier are digits_data.py's, the score
digits_score.py's; this module holds the study (its rows, table and curves)
and the command.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments import digits_data
from experiments import digits_score

# restart.py's time curriculum as folder.py had it before it drew t ~ U[0, 1].
_CURRICULUM = {
    "kind": "curriculum",
    "steps": 0,
    "blend_steps": 1600,
    "first": {"kind": "alpha_range", "alpha_min": 0.0, "alpha_max": 0.15},
    "then": {"kind": "logit_normal", "mean": -1.0, "std": 1.5},
}
# (name, what it is, config overrides of configs/folder.py). The screen's
# single levers (conv, overlap, velocity) each change one field of the row
# above them.
_BEFORE = {
    "flow.out_head": "linear",
    "time.sampler": _CURRICULUM,
    "flow.predict": "velocity",
}
ROWS = (
    (
        "before",
        "folder.py before: DiT's linear head, restart.py's time curriculum",
        _BEFORE,
    ),
    (
        "conv",
        "before + a 3x3 conv over the output",
        {**_BEFORE, "flow.out_head": "conv"},
    ),
    (
        "overlap",
        "before + each cell decoded from its token and the neighbours'",
        {**_BEFORE, "flow.out_head": "overlap"},
    ),
    (
        "velocity",
        "overlap head, t ~ U[0, 1], the DiT predicting the velocity",
        {"flow.predict": "velocity"},
    ),
    (
        "folder",
        "folder.py: overlap head, t ~ U[0, 1], predicting the image",
        {},
    ),
    # The noise-path control (configs/noise_control.py's changes) on folder.py.
    (
        "noise",
        "noise-path control: Gaussian noise to image, same DiT",
        {
            "objective": "noise_flow",
            "time.sampler": {"kind": "logit_normal", "mean": 0.0, "std": 1.0},
        },
    ),
)
DEFAULT_ROWS = ("before", "folder", "noise")
COLUMNS = (
    ("mean/digit_acc", "digit acc (mu)"),
    ("mean/blockiness", "blockiness (mu)"),
    ("mean/hf", "hf (mu)"),
    ("draw/digit_acc", "digit acc (draw)"),
    ("draw/blockiness", "blockiness (draw)"),
    ("val/flow", "val flow (last)"),
    ("val/kid_alexnet", "KID alexnet (last)"),
    ("val/fd_alexnet", "FD alexnet (last)"),
    ("val/blockiness@mid", "val blockiness (mid)"),
    ("val/blockiness", "val blockiness (last)"),
    ("minutes", "minutes"),
    ("steps_per_sec", "steps/s"),
)


def train_row(
    data: str, row: str, seed: int, workroot: str, variant: str = ""
) -> str:
  from experiments import common  # pylint: disable=g-import-not-at-top
  from experiments import sweep

  overrides = dict(next(r for r in ROWS if r[0] == row)[2])
  c = common.recipe("folder", variant)
  c.data.path = data
  c.seed = seed
  sweep.apply_overrides(c, overrides)
  workdir = os.path.join(workroot, f"{row}_s{seed}")
  common.train_once(c, workdir)
  return workdir


def run_numbers(workdir: str) -> dict[str, float]:
  """The score plus what the run logged: the last and the middle evaluation's
  val/flow and val/blockiness, its minutes and steps/s."""
  from txt2img_jax.utils import runfiles  # pylint: disable=g-import-not-at-top
  from experiments import common

  out = dict(digits_score.score(workdir))
  rows = runfiles.read_metrics(workdir)
  evals = [r for r in rows if "val/blockiness" in r]
  if evals:
    out["val/flow"] = evals[-1]["val/flow"]
    out["val/blockiness"] = evals[-1]["val/blockiness"]
    out["val/blockiness@mid"] = evals[(len(evals) - 1) // 2]["val/blockiness"]
    for key in ("val/kid_alexnet", "val/fd_alexnet"):
      if key in evals[-1]:
        out[key] = evals[-1][key]
  out["steps_per_sec"] = common.median_steps_per_sec(workdir)
  out["minutes"] = out["step"] / out["steps_per_sec"] / 60
  return out


def table_text(numbers: dict[str, list[dict]]) -> str:
  head = "| recipe | seeds | " + " | ".join(n for _, n in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  for name, what, _ in ROWS:
    runs = numbers.get(name)
    if not runs:
      continue
    cells = []
    for key, _ in COLUMNS:
      v = np.array([r[key] for r in runs if key in r], float)
      fmt = lambda x: f"{x:.3f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"
      cells.append(
          ""
          if not v.size
          else fmt(v.mean())
          if v.size == 1
          else f"{fmt(v.mean())} ± {fmt(v.std())}"
      )
    seeds = ",".join(str(r["seed"]) for r in runs)
    lines.append(f"| {name}: {what} | {seeds} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def table(
    data: str,
    rows: list[str],
    seeds: list[int],
    workroot: str,
    out: str,
    command: str,
    variant: str = "",
) -> str:
  from experiments import common  # pylint: disable=g-import-not-at-top

  numbers = {}
  for row in rows:
    for seed in seeds:
      workdir = train_row(data, row, seed, workroot, variant)
      numbers.setdefault(row, []).append({"seed": seed, **run_numbers(workdir)})
  text = table_text(numbers)
  common.write_table(out, command, text)
  return text


def curves_text(workdirs: list[str]) -> str:
  from txt2img_jax.utils import runfiles  # pylint: disable=g-import-not-at-top

  keys = ("val/flow", "val/blockiness", "val/hf")
  lines = ["| run | step | " + " | ".join(keys) + " |", "|---|---|---|---|---|"]
  for w in workdirs:
    for r in runfiles.read_metrics(w):
      if "val/blockiness" in r:
        lines.append(
            f"| {os.path.basename(os.path.normpath(w))} | {r['step']} | "
            + " | ".join(f"{r[k]:.3f}" for k in keys)
            + " |"
        )
  return "\n".join(lines)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ("write", "score", "table", "curves"):
    raise ValueError("give one command: write | score | table | curves")
  if argv[1] == "curves":
    if f.workdirs:
      workdirs = f.workdirs.split(",")
    else:
      root = f.workroot
      workdirs = (
          sorted(
              os.path.join(root, d)
              for d in os.listdir(root)
              if os.path.exists(os.path.join(root, d, "metrics.jsonl"))
          )
          if os.path.isdir(root)
          else []
      )
      if not workdirs:
        raise FileNotFoundError(f"no runs under --workroot={root}")
    print(curves_text(workdirs))
    return
  if argv[1] == "table":
    if not f.data:
      raise ValueError("table needs --data=DIR (written by `write`)")
    known = [r[0] for r in ROWS]
    rows = f.rows.split(",") if f.rows else list(DEFAULT_ROWS)
    if set(rows) - set(known):
      raise ValueError(
          f"--rows: unknown {sorted(set(rows) - set(known))}; known {known}"
      )
    seeds = [int(x) for x in f.seeds.split(",")]
    command = "python -m experiments.digits " + " ".join(sys.argv[1:])
    print(
        table(
            f.data,
            rows,
            seeds,
            f.workroot,
            f.out or "docs/digits.md",
            command,
            f.config_variant,
        )
    )
    return
  if argv[1] == "write":
    if not f.dir:
      raise ValueError("write needs --dir=DIR")
    n = digits_data.write(f.dir, f.size)
    print(f"wrote {n} digits and metadata.jsonl to {f.dir}")
    return
  if not f.workdir:
    raise ValueError("score needs --workdir=W")
  s = digits_score.score(f.workdir, seed=f.seed)
  print(json.dumps(s, indent=1))
  if f.json:
    with open(f.json, "w") as fh:
      json.dump(s, fh, indent=1)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("dir", None, "write: the folder to write.")
  flags.DEFINE_string(
      "out", None, "table: the markdown file (default " "docs/digits.md)."
  )
  flags.DEFINE_string(
      "config_variant",
      "",
      "table: variant of configs/folder.py " "(tiny: CI-sized).",
  )
  flags.DEFINE_string("data", None, "table: the digits folder `write` made.")
  flags.DEFINE_string(
      "rows",
      "",
      "table: rows of ROWS, comma-separated "
      f"(default {','.join(DEFAULT_ROWS)}).",
  )
  flags.DEFINE_string("seeds", "0,1,2", "table: seeds.")
  flags.DEFINE_string(
      "workroot",
      "workdirs/digits",
      "table: where the runs " "go; curves: where they are.",
  )
  flags.DEFINE_integer("size", 32, "write: image side in pixels.")
  flags.DEFINE_string("workdir", None, "score: a trained run on the digits.")
  flags.DEFINE_string(
      "workdirs",
      None,
      "curves: trained runs, comma-separated "
      "(default: every run under --workroot).",
  )
  flags.DEFINE_integer("seed", 0, "score: seed of the z_text draws.")
  flags.DEFINE_string("json", None, "score: also write the numbers here.")


if __name__ == "__main__":
  from txt2img_jax import cli  # pylint: disable=g-import-not-at-top

  _define_flags()
  cli.run(main)
