"""Which text head? Each head with its own LR, then three seeds: the ablation.

  python -m experiments.heads_ablation [--steps=800]
      [--lrs=1e-3,2e-3,4e-3] [--seeds=0,1,2] [--num=500]
      [--heads=pooled_mlp,token_transformer,grid_query,mlp_conv]
      [--workroot=workdirs/heads] [--out=docs/heads_ablation_table.md]

Trains the recommended recipe (configs/restart.py, its schedules rescaled to
--steps) with each text head, changing only `head.kind` and the text head's
learning rate (`optim.groups.text_head.lr`); data, budget, seeds and every
other field are equal. Two stages:

1. the LR screen: every head at every --lrs value with the first seed;
2. the ablation: every head at the LR that drew best in the screen (test
   object accuracy, then held-out) with the remaining seeds, so that each
   head is compared at its own best rate rather than at the rate the
   recipe was tuned for with another head.

Each run is scored with the structure benchmark (EMA parameters, --num
captions per split) and the z_text measures (`ztext.z_text_measures`) of the
head's posterior mean, after training and at initialisation (the run's own
step-0 parameters, from its seed): tile_repeat at init says whether a head's
cells differ by position before any training. Both tables go to --out,
rewritten after every run, and each head's seed-0 grid (reference | decoded
z_text | generated) into the docs' images. Runs go through
`sweep.run_one`, so finished runs are reused and an interrupted ablation
resumes where it stopped. Selecting on the first seed favours that seed's
result a little for every head alike; the ablation's means include it.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import flags
from absl import logging

from txt2img_jax.train import run as run_lib
from txt2img_jax.evaluation import structure
from txt2img_jax.utils import reporting
from experiments import common
from experiments import leak
from experiments import sweep
from txt2img_jax.objectives.ztext import z_text_measures

HEADS = (
    "pooled_mlp",
    "token_transformer",
    "grid_query",
    "mlp_conv",
    "token_splat",
)
DEFAULT_HEADS = "pooled_mlp,token_transformer,grid_query,mlp_conv"
METRICS = (
    "object_acc",
    "shape_acc",
    "position_acc",
    "color_acc",
    "size_acc",
    "mosaic",
    "pixel_mse_rel",
)
ZTEXT = ("corr", "caption_share", "tile_repeat", "roughness")


def label(head: str, lr: float) -> str:
  return f"{head}, text_head lr {lr:g}"


def run(head, lr, seed, f):
  overrides = {"head.kind": head, "optim.groups.text_head.lr": lr}
  workdir, summary = sweep.run_one(
      "restart",
      f.config_variant,
      label(head, lr),
      overrides,
      seed,
      f.steps,
      f.num,
      f.workroot,
  )
  summary = dict(summary)
  summary.update(init_measures(workdir, f.num))
  return workdir, summary


def init_measures(workdir: str, num: int) -> dict[str, float]:
  """z_text measures of the run's step-0 parameters on the first `num`
  test captions ("init/corr", ...), cached as ztext_init_<num>.json."""
  path = os.path.join(workdir, f"ztext_init_{num}.json")
  if os.path.exists(path):
    with open(path) as fh:
      return json.load(fh)
  run_ = run_lib.load_run(workdir)
  run_.config.eval.num = num
  data = structure.Evaluator(
      run_.config,
      run_.workdir,
      run_.builder,
      run_.text,
      run_.generate,
      run_.frozen,
      run_.stats,
  ).data["eval"]
  n = min(num, len(data["caption"]))
  mu = common.z_text_mean(
      run_,
      data["ids"][:n],
      data["mask"][:n],
      params=run_lib.initial_params(run_),
  )
  measures = {
      k.replace("ztext/", "init/"): v
      for k, v in z_text_measures(run_, mu, data["image"][:n]).items()
  }
  with open(path, "w") as fh:
    json.dump(measures, fh, indent=1)
  return measures


def pick(results: dict[float, dict]) -> float:
  """The LR whose screen run drew best: test object accuracy, then held-out."""
  return max(
      results,
      key=lambda lr: (
          results[lr]["eval/object_acc"],
          results[lr]["heldout/object_acc"],
      ),
  )


def screen_table(heads, lrs, screen, chosen) -> str:
  head = [
      "head",
      "text_head lr",
      "chosen",
      "object_acc (test)",
      "object_acc (held-out)",
      "mosaic (test)",
      "flow loss (last)",
      "z_text tile_repeat at init",
      "z_text tile_repeat",
  ]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for h in heads:
    for lr in lrs:
      if (h, lr) not in screen:
        continue
      w, s = screen[h, lr]
      lines.append(
          "| "
          + " | ".join(
              [
                  h,
                  f"{lr:g}",
                  "yes" if chosen.get(h) == lr else "",
                  f"{s['eval/object_acc']:.3f}",
                  f"{s['heldout/object_acc']:.3f}",
                  f"{s['eval/mosaic']:.3f}",
                  f"{leak.flow_loss(w)[1]:.3f}",
                  f"{s['init/tile_repeat']:.3f}",
                  f"{s['ztext/tile_repeat']:.3f}",
              ]
          )
          + " |"
      )
  return "\n".join(lines)


def ablation_table(heads, chosen, done, seeds) -> str:
  head = (
      ["head", "text_head lr", "seeds", "params (head)", "steps/s", "minutes"]
      + [f"{m} (test)" for m in METRICS]
      + ["object_acc (held-out)", "z_text tile_repeat at init"]
      + [f"z_text {m}" for m in ZTEXT]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for h in heads:
    if h not in chosen:
      continue
    results = [done[h, s] for s in seeds if (h, s) in done]
    if not results:
      continue
    cells = [
        h,
        f"{chosen[h]:g}",
        str(len(results)),
        f"{common.text_head_params(results[0][0]) / 1e6:.2f}M",
        sweep.fmt([common.median_steps_per_sec(w) for w, _ in results]),
        sweep.fmt([sweep.minutes(w) for w, _ in results]),
    ]
    cells += [sweep.fmt([s[f"eval/{m}"] for _, s in results]) for m in METRICS]
    cells.append(sweep.fmt([s["heldout/object_acc"] for _, s in results]))
    cells.append(sweep.fmt([s["init/tile_repeat"] for _, s in results]))
    cells += [sweep.fmt([s[f"ztext/{m}"] for _, s in results]) for m in ZTEXT]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def command_line(f) -> str:
  return (
      "python -m experiments.heads_ablation "
      + (f"--config_variant={f.config_variant} " if f.config_variant else "")
      + f"--steps={f.steps} --lrs={f.lrs} --seeds={f.seeds} "
      f"--num={f.num} --heads={f.heads}"
  )


def write(f, heads, lrs, screen, chosen, done, seeds) -> str:
  text = "LR screen (seed " + str(seeds[0]) + "):\n\n" + screen_table(
      heads, lrs, screen, chosen
  ) + "\n\nAblation (each head at its chosen LR; mean ± std over seeds):" "\n\n" + ablation_table(
      heads, chosen, done, seeds
  )
  if f.out:
    common.write_table(f.out, command_line(f), text)
  return text


def main(argv):
  del argv
  reporting.quiet_orbax()
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds.split(",")]
  lrs = [float(s) for s in f.lrs.split(",")]
  heads = [h for h in f.heads.split(",") if h]
  unknown = set(heads) - set(HEADS)
  if unknown or not heads:
    raise ValueError(f"--heads={f.heads!r}: pick from {', '.join(HEADS)}")
  if len(set(lrs)) != len(lrs) or min(lrs) <= 0:
    raise ValueError(f"--lrs={f.lrs!r}: distinct positive learning rates")
  screen, chosen, done = {}, {}, {}
  for h in heads:  # Stage 1: the first seed at every LR.
    for lr in lrs:
      screen[h, lr] = run(h, lr, seeds[0], f)
      logging.info("%s seed %d: %s", label(h, lr), seeds[0], screen[h, lr][1])
      write(f, heads, lrs, screen, chosen, done, seeds)
    chosen[h] = pick({lr: screen[h, lr][1] for lr in lrs})
    done[h, seeds[0]] = screen[h, chosen[h]]
  for seed in seeds[1:]:  # Stage 2: the other seeds at each head's LR.
    for h in heads:
      done[h, seed] = run(h, chosen[h], seed, f)
      logging.info(
          "%s seed %d: %s", label(h, chosen[h]), seed, done[h, seed][1]
      )
      write(f, heads, lrs, screen, chosen, done, seeds)
  print(write(f, heads, lrs, screen, chosen, done, seeds))
  if f.out:
    print(f"wrote {f.out}")
    image_dir = os.path.join(os.path.dirname(os.path.abspath(f.out)), "images")
    os.makedirs(image_dir, exist_ok=True)
    for h in heads:
      grid = os.path.join(done[h, seeds[0]][0], "samples", "z_text.png")
      if os.path.exists(grid):
        shutil.copy(grid, os.path.join(image_dir, f"heads_{h}.png"))


if __name__ == "__main__":
  from txt2img_jax import cli

  flags.DEFINE_string(
      "config_variant",
      "",
      "Variant of the recipe, e.g. "
      "'tiny' for a seconds-long smoke run of the script.",
  )
  flags.DEFINE_integer(
      "steps",
      800,
      "Train steps per run (the recipe's " "schedules rescaled to it).",
  )
  flags.DEFINE_string(
      "lrs",
      "1e-3,2e-3,4e-3",
      "Comma-separated text-head "
      "learning rates of the screen (restart.py's is 2e-3).",
  )
  flags.DEFINE_string(
      "seeds", "0,1,2", "Comma-separated seeds; the first " "screens the LRs."
  )
  flags.DEFINE_string(
      "heads",
      DEFAULT_HEADS,
      "Comma-separated head kinds: " f"any of {', '.join(HEADS)}.",
  )
  flags.DEFINE_integer("num", 500, "Benchmark captions per split.")
  flags.DEFINE_string("workroot", "workdirs/heads", "Runs go here.")
  flags.DEFINE_string(
      "out",
      "docs/heads_ablation_table.md",
      "Markdown " "tables (rewritten after each run).",
  )
  cli.run(main)
