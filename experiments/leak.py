"""Does the image leaking into x_t explain why the start of the path is not
learnt? (issue #13, defect 8) The time sampler changed alone, every other
field of the recipe fixed (and on base.py, its beta_KL), scored where
sampling starts.

  python -m experiments.leak [--steps=800] [--seeds=0,1,2]
      [--num=500] [--workroot=workdirs/leak] [--out=docs/leak.md]

On CrossFlow's path x_t = (1 - t) z_text + t x1 (sigma_min aside), the image
is in x_t for every t > 0, so the flow loss can fall by reading it off x_t;
at t = 0, where sampling starts, the image must come from z_text alone. Each
row trains one recipe with one time sampler (`sweep.run_one`: the recipe's
schedules rescaled to --steps, the structure benchmark on --num captions)
and measures, on the benchmark's test captions with z_text = the head's
posterior mean, the one-step error of the image latent from x_t at fixed t:

  err(t) = mean |x_t + (1 - t) v(x_t, t) - x1|^2 / mean |mean(x1) - x1|^2

(1 = no better than predicting the average image latent; err(0) is the
error of a one-Euler-step sample). With the final training flow loss beside
it (the mean over the first and the last log_every steps, at the row's own
time sampler), a row says whether the loss fell while t = 0 stayed
unlearnt. Finished
runs are reused, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import os

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import checkpoint_files
from txt2img_jax.evaluation import structure
from txt2img_jax.objectives import flow
from txt2img_jax.utils import reporting
from txt2img_jax.utils import runfiles
from txt2img_jax.objectives import timesteps
from experiments import common
from experiments import sweep
from txt2img_jax.models import autoencoder as ae_lib

TIMES = (0.0, 0.1, 0.5, 0.9)

# (recipe, variant): the recipe with its time sampler changed, or base.py's
# beta_KL; each row differs from one above it in one field.
ROWS = (
    # restart.py's curriculum: t in [0, 0.15] first, logit-normal(-1, 1.5)
    # mixed in over the run.
    ("restart", "restart.py:"),
    # The note's advice: uniform logSNR on [-2, 6], t = sigmoid(lambda / 2)
    # in [0.27, 0.95]: the start of the path is never drawn.
    (
        "restart",
        "logSNR [-2, 6], the note's:time.sampler={'kind': "
        "'uniform_logsnr', 'logsnr_min': -2.0, 'logsnr_max': 6.0}",
    ),
    # base.py's sampler: the whole path, uniformly.
    (
        "restart",
        "uniform [0, 1], base.py's:time.sampler={'kind': 'uniform', "
        "'t_min': 0.0, 't_max': 1.0}",
    ),
    # No leak: x_t is at least 99% z_text.
    (
        "restart",
        "t in [0, 0.01], no leak:time.sampler={'kind': 'uniform', "
        "'t_min': 0.0, 't_max': 0.01}",
    ),
    # The same two on base.py itself (the plateaued run's recipe).
    ("base", "base.py:"),
    (
        "base",
        "base.py, t in [0, 0.01]:time.sampler={'kind': 'uniform', "
        "'t_min': 0.0, 't_max': 0.01}",
    ),
    # base.py's beta_KL of 1e-2 at restart.py's 1e-4: does the start of the
    # path fail on base.py without its strong KL?
    ("base", "base.py, beta 1e-4:loss.kl_weight=1e-4"),
)


def path_errors(workdir: str, num: int, times=TIMES) -> dict[str, float]:
  """err(t) for each t on the first `num` test captions (module docstring),
  cached in the workdir as path_errors_<num>.json for the step it measured."""
  path = os.path.join(workdir, f"path_errors_{num}.json")
  _, step = checkpoint_files.resolve_checkpoint(workdir)
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("step") == step and all(
        f"path/err_t{t:g}" in cached["errors"] for t in times
    ):
      return cached["errors"]
  run = run_lib.load_run(workdir)
  run.config.eval.num = num
  ev = structure.Evaluator(
      run.config,
      run.workdir,
      run.builder,
      run.text,
      run.generate,
      run.frozen,
      run.stats,
  )
  data = ev.data["eval"]
  n = min(num, len(data["caption"]))
  mu = common.z_text_mean(run, data["ids"][:n], data["mask"][:n])
  x1 = np.asarray(
      ae_lib.standardize(
          run.autoencoder.encode_moments(
              run.autoencoder.params, data["image"][:n]
          )[0],
          run.stats,
      )
  )
  baseline = float(np.mean((x1 - x1.mean(0, keepdims=True)) ** 2))
  c = run.config

  @functools.partial(jax.jit, static_argnames="t")
  def estimate(params, z, x, t):
    tt = jnp.full((z.shape[0],), t, jnp.float32)
    x_t = flow.interpolate(z, x, tt, c.flow.sigma_min)
    v = run.model.apply(
        {"params": params},
        x_t,
        timesteps.time_input(tt, c.flow.time_input),
        jnp.ones((z.shape[0],), jnp.int32),
        method="velocity",
    ).astype(jnp.float32)
    return flow.one_step_estimate(x_t, v, tt)

  errors = {}
  for t in times:
    sq = 0.0
    for i in range(0, n, 100):
      x1_hat = np.asarray(
          estimate(run.ema_params, mu[i : i + 100], x1[i : i + 100], float(t))
      )
      sq += float(np.sum((x1_hat - x1[i : i + 100]) ** 2))
    errors[f"path/err_t{t:g}"] = sq / x1.size / baseline
  with open(path, "w") as f:
    json.dump({"step": step, "errors": errors}, f, indent=1)
  return errors


def flow_loss(workdir: str) -> tuple[float, float]:
  """The training flow loss (train/flow_raw, its mean over a log interval:
  log_every steps) of the first and of the last interval."""
  values = [
      r["train/flow_raw"]
      for r in runfiles.read_metrics(workdir)
      if "train/flow_raw" in r
  ]
  return (values[0], values[-1]) if values else (float("nan"),) * 2


def table(rows, done, seeds) -> str:
  head = (
      [
          "recipe",
          "variant",
          "seeds",
          "flow loss, first interval",
          "flow loss, last interval",
      ]
      + [f"err(t = {t:g})" for t in TIMES]
      + ["object_acc (test)", "object_acc (held-out)", "mosaic (test)"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for recipe, label, _ in rows:
    results = [done[label, s] for s in seeds if (label, s) in done]
    if not results:
      continue
    cells = [
        f"{recipe}.py",
        label,
        str(len(results)),
        sweep.fmt([r["loss"][0] for r in results]),
        sweep.fmt([r["loss"][1] for r in results]),
    ]
    cells += [
        sweep.fmt([r["errors"][f"path/err_t{t:g}"] for r in results])
        for t in TIMES
    ]
    cells += [
        sweep.fmt([r["score"][k] for r in results])
        for k in ("eval/object_acc", "heldout/object_acc", "eval/mosaic")
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  reporting.quiet_orbax()
  f = flags.FLAGS
  rows = [(recipe, *sweep.parse_variant(spec)) for recipe, spec in ROWS]
  if f.limit:
    rows = rows[: f.limit]
  seeds = [int(s) for s in f.seeds.split(",")]
  for recipe, _, overrides in rows:  # Every row is checked before any trains.
    sweep.apply_overrides(
        common.recipe(recipe, f.config_variant), dict(overrides)
    )
  command = (
      "python -m experiments.leak "
      + (f"--config_variant={f.config_variant} " if f.config_variant else "")
      + f"--steps={f.steps} --seeds={f.seeds} --num={f.num}"
  )
  done = {}
  for seed in seeds:
    for recipe, label, overrides in rows:
      workdir, score = sweep.run_one(
          recipe,
          f.config_variant,
          label,
          overrides,
          seed,
          f.steps,
          f.num,
          f.workroot,
      )
      done[label, seed] = {
          "score": score,
          "errors": path_errors(workdir, f.num),
          "loss": flow_loss(workdir),
      }
      logging.info("%s seed %d: %s", label, seed, done[label, seed])
      text = table(rows, done, seeds)
      if f.out:
        common.write_table(f.out, command, text)
  print(table(rows, done, seeds))
  if f.out:
    print(f"wrote {f.out}")


if __name__ == "__main__":
  from txt2img_jax import cli

  flags.DEFINE_integer("steps", 800, "Train steps per run.")
  flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
  flags.DEFINE_integer("num", 500, "Benchmark captions per split.")
  flags.DEFINE_integer("limit", 0, "Run only the first N rows (0: all).")
  flags.DEFINE_string(
      "config_variant",
      "",
      "The recipes' variant, e.g. "
      "'tiny' for a seconds-long smoke run of the script.",
  )
  flags.DEFINE_string("workroot", "workdirs/leak", "Runs go here.")
  flags.DEFINE_string("out", "", "Markdown table (rewritten after each run).")
  cli.run(main)
