"""The overfit health check ("小批过拟合"): can the model memorise a small subset?

Trains a copy of the config on the first `subset` train examples with every group's learning
rate doubled, then requires
  1. loss_flow to fall by more than 20% (first logged value -> mean of the last three logged
     values), the note's criterion, AND
  2. the text-only reconstruction at t = 0 to beat the subset's mean image:
     rel = mse(generate(caption), image) / mse(mean_image, image) < 0.8.
Why criterion 2 exists: see `txt2img_jax.health` and docs/health.md.
"""

from __future__ import annotations

import contextlib
import json
import time

from absl import logging
import ml_collections
import numpy as np

from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.train import run_data
from txt2img_jax.health_checks.result import Result

# --- Thresholds (docs/health.md explains each). ------------------------------

NOTE_SUBSET = 512  # The note: 512 samples ...
LR_FACTOR = 2.0  # ... LR x 2 ...
NOTE_STEPS = (2000, 3000)  # ... 2-3k steps (at full scale, on a GPU).
# configs/restart.py's train step runs ~1.5 steps/s at batch 64 on the 2-core
# CPU this project is developed on: 450 steps ~ 5 min (56 epochs of 512).
DEFAULT_STEPS = 450
MIN_FALL = 0.20  # The note: loss_flow must fall by more than 20%.
MAX_REL = 0.8  # Text-only reconstruction / mean-image baseline.
DEFAULT_RECON = 64  # Training captions regenerated for criterion 2.
LOG_POINTS = 20  # Logged loss points over the run (>= 10 needed).


def overfit_config(
    config: ml_collections.ConfigDict,
    steps: int = DEFAULT_STEPS,
    subset: int = NOTE_SUBSET,
    lr_factor: float = LR_FACTOR,
) -> ml_collections.ConfigDict:
  """A copy of `config` set up as the note's small-batch overfit run."""
  c = config.copy_and_resolve_references()
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  subset = min(int(subset), int(c.data.num_train))
  if subset < c.batch_size:
    raise ValueError(
        f"subset={subset} is smaller than batch_size=" f"{c.batch_size}"
    )
  with c.unlocked():
    c.name = f"{config.name}_overfit"
    c.data.subset_size = subset
    # LR x factor: the peak of every group, and any cap that would clip it.
    for g in c.optim.groups:
      grp = c.optim.groups[g]
      grp.lr = float(grp.lr) * lr_factor
      if grp.get("max_lr") is not None:
        grp.max_lr = float(grp.max_lr) * lr_factor
      sched = grp.get("schedule")
      if sched and sched.get("max_lr") is not None:
        sched.max_lr = float(sched.max_lr) * lr_factor
    if c.optim.schedule.get("max_lr") is not None:
      c.optim.schedule.max_lr = float(c.optim.schedule.max_lr) * lr_factor
    # A decaying schedule must not end before the check does (the tiny
    # config's decays in 6 steps); the warmup must leave room to train.
    sched = c.optim.schedule
    if sched.get("kind") == "warmup_cosine" and "decay_steps" in sched:
      sched.decay_steps = max(int(sched.decay_steps), steps)
    if "warmup_steps" in sched:
      sched.warmup_steps = min(int(sched.warmup_steps), max(1, steps // 10))
    c.total_steps = steps
    c.log_every = max(1, steps // LOG_POINTS)
    c.checkpoint_every = steps
    c.keep_checkpoints = 1
    # Sample grid and benchmark only at the end (the loop always runs them
    # at the last step), and small.
    c.sample_every = 0
    c.eval_every = 0
    c.eval.num = min(int(c.eval.num), 16)
    c.eval.batch_size = min(int(c.eval.batch_size), c.eval.num)
    c.sample.grid_size = min(int(c.sample.grid_size), 8)
    c.init_from = ""
  return c


def _deranged(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each row replaced by another row's image (a random cyclic derangement:
  no example keeps its own image)."""
  n = len(images)
  if n < 2:
    return images
  p = rng.permutation(n)
  out = np.empty_like(images)
  out[p] = images[np.roll(p, -1)]
  return out


@contextlib.contextmanager
def broken_targets(seed: int = 0):
  """Test-only fault injection: while active, every training batch's images
  are those of other examples of the same batch, drawn afresh per step, so a
  caption no longer determines its image. Patches `run_data.train_batches`
  (which the trainer looks up at run time); restored on exit."""
  original = run_data.train_batches

  def patched(config, builder, text, start_step, **kwargs):
    rng = np.random.default_rng([seed, start_step, 0xBAD])
    for batch in original(config, builder, text, start_step, **kwargs):
      batch = dict(batch)
      batch["image"] = _deranged(np.asarray(batch["image"]), rng)
      yield batch

  run_data.train_batches = patched
  try:
    yield
  finally:
    run_data.train_batches = original


def read_loss_curve(workdir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, loss_flow, loss_flow_ema or NaN) from W/metrics.jsonl."""
  steps, flow, ema = [], [], []
  for row in runfiles.read_metrics(workdir):
    if "train/loss_flow" in row:
      steps.append(row["step"])
      flow.append(row["train/loss_flow"])
      ema.append(row.get("train/loss_flow_ema", float("nan")))
  return np.asarray(steps), np.asarray(flow), np.asarray(ema)


def loss_fall(flow: np.ndarray, tail: int = 3) -> float:
  """Relative fall: 1 - mean(last `tail` values) / first value."""
  if len(flow) < tail + 1:
    raise ValueError(
        f"need at least {tail + 1} logged loss values, got " f"{len(flow)}"
    )
  return float(1.0 - np.mean(flow[-tail:]) / flow[0])


def text_only_reconstruction(
    workdir: str, num: int = DEFAULT_RECON, seed: int = 0
) -> dict[str, float]:
  """Images generated from the first `num` training captions (the run's EMA
  parameters and sampler settings, starting at t = 0 from the text alone),
  compared with the true images and with the subset's mean image."""
  from txt2img_jax.evaluation import structure
  from txt2img_jax.train import run as run_lib
  from txt2img_jax.data import pipeline

  run = run_lib.load_run(workdir)
  c = run.config
  subset = int(c.data.subset_size or c.data.num_train)
  data = pipeline.load_split(
      run.builder,
      "train",
      subset,
      tokenizer=run.text.tokenizer,
      max_len=c.data.max_len,
  )
  num = min(num, subset)
  mean_img = data["image"].mean(0, keepdims=True)
  gen = structure.generate_images(
      run.generate,
      run.ema_params,
      run.frozen,
      run.stats,
      c.sample,
      data["ids"][:num],
      data["mask"][:num],
      batch_size=min(num, 64),
      seed=seed,
  )
  img = data["image"][:num]
  mse_gen = float(np.mean((gen - img) ** 2))
  mse_mean = float(np.mean((mean_img - img) ** 2))
  return {
      "recon_num": num,
      "recon_mse": mse_gen,
      "mean_image_mse": mse_mean,
      "rel": mse_gen / max(mse_mean, 1e-12),
      "step": run.step,
  }


# Written into every workdir the check makes: the only non-empty directory it will wipe. Any
# other (a training run above all, which holds config.json and metrics.jsonl like a check's
# run does) is refused.
MARKER = ".health_overfit"


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """Where the check trains when no --workdir is given (relative)."""
  return paths.join("workdirs", f"health_overfit_{config.name}")


def _prepare_workdir(workdir: str) -> None:
  """Empty a directory an earlier check made, or make a new one, and mark it as the check's;
  refuse to touch any other non-empty directory."""
  if paths.isdir(workdir) and paths.listdir(workdir):
    if not paths.exists(paths.join(workdir, MARKER)):
      raise ValueError(
          f"workdir {workdir} is not empty and was not made by the overfit check (no "
          f"{MARKER} file in it); refusing to delete it: give --workdir a new or empty "
          "directory"
      )
    paths.rmtree(workdir)
  paths.makedirs(workdir)
  paths.write_text(
      paths.join(workdir, MARKER),
      "Made by `python -m txt2img_jax.health overfit`; the next check here wipes it.\n",
  )


def run_overfit(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    steps: int = DEFAULT_STEPS,
    subset: int = NOTE_SUBSET,
    break_targets: bool = False,
    *,
    lr_factor: float = LR_FACTOR,
    recon_num: int = DEFAULT_RECON,
    min_fall: float = MIN_FALL,
    max_rel: float = MAX_REL,
    plot: bool = True,
) -> Result:
  """Trains the overfit copy of `config` in `workdir` (a new or empty
  directory, or one an earlier check made, which is wiped first) and judges
  it; writes W/overfit.json and W/overfit.png."""
  from txt2img_jax.train import loop as train

  c = overfit_config(config, steps, subset, lr_factor)
  workdir = paths.abspath(workdir or default_workdir(config))
  _prepare_workdir(workdir)
  logging.info(
      "overfit: %d steps on %d examples, lr x %g%s, workdir %s",
      steps,
      c.data.subset_size,
      lr_factor,
      " (BROKEN TARGETS)" if break_targets else "",
      workdir,
  )
  ctx = broken_targets(c.seed) if break_targets else contextlib.nullcontext()
  t0 = time.perf_counter()
  with ctx:
    train.train_and_evaluate(c, workdir)
  train_s = time.perf_counter() - t0

  steps_logged, flow, ema = read_loss_curve(workdir)
  fall = loss_fall(flow)
  t0 = time.perf_counter()
  recon = text_only_reconstruction(workdir, recon_num, seed=c.seed)
  recon_s = time.perf_counter() - t0
  ok_fall = fall > min_fall
  ok_rel = recon["rel"] < max_rel
  passed = ok_fall and ok_rel
  reason = (
      f"loss_flow fell {100 * fall:.1f}% ({flow[0]:.4f} -> "
      f"{np.mean(flow[-3:]):.4f}; need > {100 * min_fall:.0f}%"
      f"{'' if ok_fall else ' ✗'}), text-only reconstruction "
      f"rel = {recon['rel']:.3f} (need < {max_rel}"
      f"{'' if ok_rel else ' ✗'}; 1.0 = no better than the mean image)"
  )
  numbers = {
      "config": config.name,
      "steps": steps,
      "subset": int(c.data.subset_size),
      "lr_factor": lr_factor,
      "break_targets": bool(break_targets),
      "batch_size": int(c.batch_size),
      "loss_flow_first": float(flow[0]),
      "loss_flow_last3": float(np.mean(flow[-3:])),
      "fall": fall,
      "min_fall": min_fall,
      "fall_ok": ok_fall,
      "max_rel": max_rel,
      "rel_ok": ok_rel,
      **recon,
      "train_seconds": train_s,
      "recon_seconds": recon_s,
      "curve": {
          "step": steps_logged.tolist(),
          "loss_flow": flow.tolist(),
          "loss_flow_ema": [
              None if not np.isfinite(v) else float(v) for v in ema
          ],
      },
  }
  result = Result("overfit", passed, reason, numbers)
  paths.write_text(
      paths.join(workdir, "overfit.json"),
      json.dumps(
          {"passed": passed, "verdict": result.verdict, **numbers}, indent=2
      ),
  )
  if plot:
    plot_overfit(result, paths.join(workdir, "overfit.png"))
  return result


def plot_overfit(result: Result, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  n = result.numbers
  curve = n["curve"]
  fig, ax = plt.subplots(figsize=(7, 4.2))
  ax.plot(curve["step"], curve["loss_flow"], "o-", ms=3, label="loss_flow")
  ema = [np.nan if v is None else v for v in curve["loss_flow_ema"]]
  if np.isfinite(ema).any():
    ax.plot(curve["step"], ema, "-", label="loss_flow EMA")
  target = n["loss_flow_first"] * (1 - n["min_fall"])
  ax.axhline(
      target,
      color="gray",
      ls="--",
      lw=1,
      label=f"-{100 * n['min_fall']:.0f}% of first",
  )
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss_flow")
  ax.legend()
  ax.set_title(
      f"overfit {'PASS' if result.passed else 'FAIL'}: fall "
      f"{100 * n['fall']:.1f}%, text-only rel {n['rel']:.3f}"
      f"{' (broken targets)' if n['break_targets'] else ''}",
      fontsize=10,
  )
  fig.tight_layout()
  paths.write_with(path, fig.savefig, dpi=100, format="png")
  plt.close(fig)
