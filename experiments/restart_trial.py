"""The note's suggested trial at small scale: restart a plateaued run.

  python -m experiments.restart_trial [--base_steps=800]
      [--restart_steps=400] [--num=200] [--workroot=workdirs/restart_trial]

1. Train configs/base.py (the note's run) for base_steps (or reuse it).
2. Restart from its last checkpoint with configs/restart.py's recipe
   (--config.init_from): a new SGDR cycle whose peak is 2x the base LR and
   whose floor is the LR the old run had reached, the recipe's time sampling
   and loss weights. The text head stays the base run's (pooled_mlp), so all
   weights carry over and only the recipe changes.
3. Control: the base run simply continued for the same number of steps with
   its own (decayed) LR.
Plots loss_flow of all three and prints the structure benchmark before and
after; writes docs/images/restart_trial.png and docs/restart_trial_table.md.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from txt2img_jax.utils import reporting
from experiments import common

METRICS = (
    "object_acc",
    "shape_acc",
    "position_acc",
    "color_acc",
    "mosaic",
    "pixel_mse_rel",
)


def curve(workdir, key="train/loss_flow", offset=0):
  rows = [r for r in common.train_metrics(workdir) if key in r]
  return (
      np.array([r["step"] for r in rows]) + offset,
      np.array([r[key] for r in rows]),
  )


def main(argv):
  del argv
  reporting.quiet_orbax()
  f = flags.FLAGS
  base_dir = os.path.join(f.workroot, "base")
  restart_dir = os.path.join(f.workroot, "restarted")
  control_dir = os.path.join(f.workroot, "continued")

  base = common.recipe("base", flags.FLAGS.config_variant)
  base.total_steps = f.base_steps
  base.eval_every = 0
  common.train_once(base, base_dir)
  before = common.score(base_dir, f.num)

  restart = common.recipe("restart", flags.FLAGS.config_variant)
  restart.head.kind = base.head.kind  # Same architecture: every weight loads,
  restart.flow.predict = base.flow.predict  # and keeps what it predicts.
  restart.init_from = os.path.abspath(base_dir)
  restart.total_steps = f.restart_steps
  restart.eval_every = 0
  common.train_once(restart, restart_dir)
  after = common.score(restart_dir, f.num)

  # The control resumes a copy of the base run with its own schedule.
  if not os.path.isdir(control_dir):
    import shutil

    shutil.copytree(base_dir, control_dir)
  control = common.recipe("base", flags.FLAGS.config_variant)
  control.total_steps = f.base_steps + f.restart_steps
  control.eval_every = 0
  common.train_once(control, control_dir)
  continued = common.score(control_dir, f.num)

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for workdir, label, offset in (
      (control_dir, "base, continued", 0),
      (restart_dir, "restarted (restart.py)", f.base_steps),
  ):
    s, v = curve(workdir, offset=offset)
    axes[0].plot(s, v, label=label)
    s, lr = curve(workdir, "train/lr/flow", offset)
    axes[1].plot(s, lr, label=label)
  axes[0].axvline(f.base_steps, color="gray", ls="--", lw=0.8)
  axes[0].set(
      xlabel="step",
      ylabel="loss_flow",
      yscale="log",
      title="flow loss: restart vs continue",
  )
  axes[1].set(
      xlabel="step",
      ylabel="lr (flow group)",
      yscale="log",
      title="actual learning rate",
  )
  for ax in axes:
    ax.legend()
  os.makedirs(f.image_dir, exist_ok=True)
  png = os.path.join(f.image_dir, "restart_trial.png")
  fig.tight_layout()
  fig.savefig(png, dpi=100)

  lines = [
      "| run | steps | loss_flow (last) | "
      + " | ".join(f"{m} (test)" for m in METRICS)
      + " | object_acc (held-out) |",
      "|" + "---|" * (4 + len(METRICS)),
  ]
  for label, workdir, summary, steps in (
      ("base (before)", base_dir, before, f.base_steps),
      (
          "base, continued",
          control_dir,
          continued,
          f.base_steps + f.restart_steps,
      ),
      ("restarted", restart_dir, after, f.base_steps + f.restart_steps),
  ):
    last = curve(workdir)[1][-1]
    lines.append(
        "| "
        + " | ".join(
            [label, str(steps), f"{last:.4f}"]
            + [f"{summary[f'eval/{m}']:.3f}" for m in METRICS]
            + [f"{summary['heldout/object_acc']:.3f}"]
        )
        + " |"
    )
  table = "\n".join(lines)
  print(table)
  with open(f.out, "w") as fh:
    fh.write(
        f"<!-- written by python -m experiments.restart_trial "
        f"--base_steps={f.base_steps} --restart_steps={f.restart_steps} "
        f"--num={f.num} -->\n{table}\n"
    )
  print(f"wrote {f.out} and {png}")


if __name__ == "__main__":
  from txt2img_jax import cli

  flags.DEFINE_string(
      "config_variant",
      "",
      "Variant of every recipe, e.g. "
      "'tiny' for a seconds-long smoke run of the script.",
  )
  flags.DEFINE_integer("base_steps", 800, "Steps of the base run.")
  flags.DEFINE_integer("restart_steps", 400, "Steps after the restart.")
  flags.DEFINE_integer("num", 200, "Benchmark captions per split.")
  flags.DEFINE_string("workroot", "workdirs/restart_trial", "Runs go here.")
  flags.DEFINE_string("out", "docs/restart_trial_table.md", "Markdown table.")
  flags.DEFINE_string("image_dir", "docs/images", "Where the plot goes.")
  cli.run(main)
