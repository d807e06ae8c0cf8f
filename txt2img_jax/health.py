"""Health checks of the diagnosis note, as commands with a verdict.

  python -m txt2img_jax.health overfit --config=configs/restart.py \
      [--workdir=W] [--steps=450] [--subset=512] [--break_targets]
  python -m txt2img_jax.health latents --config=configs/restart.py \
      [--workdir=W] [--num=1024] [--stats_scale=3]

Exit code 0 = PASS, 1 = FAIL, 2 = usage error. See docs/health.md for what each check does,
its thresholds and why.

overfit ("小批过拟合"): train a copy of the config on the first `subset`
train examples with every group's learning rate doubled, then require
  1. loss_flow to fall by more than 20% (first logged value -> mean of the
     last three logged values), the note's criterion, AND
  2. the text-only reconstruction at t = 0 to beat the subset's mean image:
     rel = mse(generate(caption), image) / mse(mean_image, image) < 0.8.
Criterion 2 exists because on the noise-free path x_t = (1 - t) z_text +
t x1 the image leaks into the network's input for every t > 0, and the
-z_text part of the target v = x1 - z_text is learnable from the text alone,
so loss_flow falls by > 20% even when the captions say nothing about the
images (`--break_targets` shows it).

latents ("VAE 一致性"): the standardised latents of the training encode path
have per-channel mean ~ 0 and std ~ 1, the trainer and the sampler use the
same encode / decode path, decode(unstandardise(standardise(sample(encode(x)))))
reconstructs x, and the reparameterisation noise is small next to the
latent scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from txt2img_jax import assets
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax import runfiles

# --- Thresholds (docs/health.md explains each). ------------------------------

# overfit
NOTE_SUBSET = 512          # The note: 512 samples ...
LR_FACTOR = 2.0            # ... LR x 2 ...
NOTE_STEPS = (2000, 3000)  # ... 2-3k steps (at full scale, on a GPU).
# configs/restart.py's train step runs ~1.5 steps/s at batch 64 on the 2-core
# CPU this project is developed on: 450 steps ~ 5 min (56 epochs of 512).
DEFAULT_STEPS = 450
MIN_FALL = 0.20            # The note: loss_flow must fall by more than 20%.
MAX_REL = 0.8              # Text-only reconstruction / mean-image baseline.
DEFAULT_RECON = 64         # Training captions regenerated for criterion 2.
LOG_POINTS = 20            # Logged loss points over the run (>= 10 needed).

# latents
DEFAULT_LATENT_NUM = 1024
MAX_ABS_MEAN = 0.1         # |per-channel mean| of the standardised latents.
MAX_STD_DEV = 0.1          # |per-channel std - 1|.
MAX_RECON_ABS = 1.0 / 255  # Round trip, max |error| in [0, 1] pixel units.
MAX_RECON_MEAN = 0.25 / 255  # Round trip, mean |error|.
MAX_NOISE_RATIO = 0.05     # exp(0.5 logvar) / scale, per channel.


@dataclasses.dataclass
class Result:
  """What a check found: the verdict, a one-line reason and its numbers."""
  check: str
  passed: bool
  reason: str
  numbers: dict[str, Any]

  @property
  def verdict(self) -> str:
    return f"{self.check}: {'PASS' if self.passed else 'FAIL'} — {self.reason}"


# =============================================================================
# overfit
# =============================================================================

def overfit_config(config: ml_collections.ConfigDict, steps: int = DEFAULT_STEPS,
                   subset: int = NOTE_SUBSET, lr_factor: float = LR_FACTOR
                   ) -> ml_collections.ConfigDict:
  """A copy of `config` set up as the note's small-batch overfit run."""
  c = config.copy_and_resolve_references()
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  subset = min(int(subset), int(c.data.num_train))
  if subset < c.batch_size:
    raise ValueError(f"subset={subset} is smaller than batch_size="
                     f"{c.batch_size}")
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
  caption no longer determines its image. Patches `assets.train_batches`
  (which the trainer looks up at run time); restored on exit."""
  original = assets.train_batches

  def patched(config, builder, text, start_step):
    rng = np.random.default_rng([seed, start_step, 0xBAD])
    for batch in original(config, builder, text, start_step):
      batch = dict(batch)
      batch["image"] = _deranged(np.asarray(batch["image"]), rng)
      yield batch

  assets.train_batches = patched
  try:
    yield
  finally:
    assets.train_batches = original


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
    raise ValueError(f"need at least {tail + 1} logged loss values, got "
                     f"{len(flow)}")
  return float(1.0 - np.mean(flow[-tail:]) / flow[0])


def text_only_reconstruction(workdir: str, num: int = DEFAULT_RECON,
                             seed: int = 0) -> dict[str, float]:
  """Images generated from the first `num` training captions (the run's EMA
  parameters and sampler settings, starting at t = 0 from the text alone),
  compared with the true images and with the subset's mean image."""
  from txt2img_jax import evaluate
  from txt2img_jax import inference
  from txt2img_jax.data import pipeline
  run = inference.load_run(workdir)
  c = run.config
  subset = int(c.data.subset_size or c.data.num_train)
  data = pipeline.load_split(run.builder, "train", subset,
                             tokenizer=run.text.tokenizer,
                             max_len=c.data.max_len)
  num = min(num, subset)
  mean_img = data["image"].mean(0, keepdims=True)
  gen = evaluate.generate_images(
      run.generate, run.ema_params, run.frozen, run.stats, c.sample,
      data["ids"][:num], data["mask"][:num], batch_size=min(num, 64),
      seed=seed)
  img = data["image"][:num]
  mse_gen = float(np.mean((gen - img) ** 2))
  mse_mean = float(np.mean((mean_img - img) ** 2))
  return {"recon_num": num, "recon_mse": mse_gen, "mean_image_mse": mse_mean,
          "rel": mse_gen / max(mse_mean, 1e-12), "step": run.step}


def _prepare_workdir(workdir: str) -> None:
  """Remove a previous check's run so every check starts fresh; refuse to
  delete a directory that does not look like one."""
  if os.path.isdir(workdir) and os.listdir(workdir):
    known = {"config.json", "metrics.jsonl", "overfit.json"}
    if not known & set(os.listdir(workdir)):
      raise ValueError(f"{workdir} is not empty and is not a previous run; "
                       "refusing to delete it")
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)


def run_overfit(config: ml_collections.ConfigDict, workdir: str | None = None,
                steps: int = DEFAULT_STEPS, subset: int = NOTE_SUBSET,
                break_targets: bool = False, *, lr_factor: float = LR_FACTOR,
                recon_num: int = DEFAULT_RECON, min_fall: float = MIN_FALL,
                max_rel: float = MAX_REL, plot: bool = True) -> Result:
  """Trains the overfit copy of `config` in `workdir` (wiped first) and
  judges it; writes W/overfit.json and W/overfit.png."""
  from txt2img_jax import train
  c = overfit_config(config, steps, subset, lr_factor)
  workdir = os.path.abspath(
      workdir or os.path.join("workdirs", f"health_overfit_{config.name}"))
  _prepare_workdir(workdir)
  logging.info("overfit: %d steps on %d examples, lr x %g%s, workdir %s",
               steps, c.data.subset_size, lr_factor,
               " (BROKEN TARGETS)" if break_targets else "", workdir)
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
  reason = (f"loss_flow fell {100 * fall:.1f}% ({flow[0]:.4f} -> "
            f"{np.mean(flow[-3:]):.4f}; need > {100 * min_fall:.0f}%"
            f"{'' if ok_fall else ' ✗'}), text-only reconstruction "
            f"rel = {recon['rel']:.3f} (need < {max_rel}"
            f"{'' if ok_rel else ' ✗'}; 1.0 = no better than the mean image)")
  numbers = {
      "config": config.name, "steps": steps, "subset": int(c.data.subset_size),
      "lr_factor": lr_factor, "break_targets": bool(break_targets),
      "batch_size": int(c.batch_size),
      "loss_flow_first": float(flow[0]), "loss_flow_last3": float(
          np.mean(flow[-3:])), "fall": fall, "min_fall": min_fall,
      "fall_ok": ok_fall, "max_rel": max_rel, "rel_ok": ok_rel,
      **recon, "train_seconds": train_s, "recon_seconds": recon_s,
      "curve": {"step": steps_logged.tolist(), "loss_flow": flow.tolist(),
                "loss_flow_ema": [None if not np.isfinite(v) else float(v)
                                  for v in ema]},
  }
  result = Result("overfit", passed, reason, numbers)
  with open(os.path.join(workdir, "overfit.json"), "w") as f:
    json.dump({"passed": passed, "verdict": result.verdict, **numbers}, f,
              indent=2)
  if plot:
    plot_overfit(result, os.path.join(workdir, "overfit.png"))
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
  ax.axhline(target, color="gray", ls="--", lw=1,
             label=f"-{100 * n['min_fall']:.0f}% of first")
  ax.set_xlabel("step")
  ax.set_ylabel("train/loss_flow")
  ax.legend()
  ax.set_title(f"overfit {'PASS' if result.passed else 'FAIL'}: fall "
               f"{100 * n['fall']:.1f}%, text-only rel {n['rel']:.3f}"
               f"{' (broken targets)' if n['break_targets'] else ''}",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# =============================================================================
# latents
# =============================================================================

def _make_latent_fn(autoencoder):
  """jit(x, stats, key) -> the standardised latents through the train step's
  path, the round trip through the sampler's, and the sample noise. `stats`
  is an argument (not a constant), so one compilation serves every call."""

  def go(x, stats, key):
    # The train step's path and the sampler's: the same two functions.
    z = ae_lib.encode_latent(autoencoder, x, key, stats)
    back = ae_lib.decode_latent(autoencoder, z, stats)
    moments = autoencoder.encode_moments(x)
    err = jnp.abs(back - jnp.asarray(x, jnp.float32))
    noise = jnp.exp(0.5 * moments[1]).reshape(-1, moments[1].shape[-1]).max(0)
    return z, err.max(), err.sum(), noise

  return jax.jit(go)


def _channel_stats(go, stats, images: np.ndarray, rng: jax.Array,
                   batch: int = 256) -> dict[str, np.ndarray]:
  """Per-channel mean / std of standardize(sample(encode_moments(x))), the
  round-trip error, and the noise / scale ratio."""
  total = total_sq = None
  count = 0
  err_max, err_sum, err_n = 0.0, 0.0, 0
  noise = None
  for i in range(0, len(images), batch):
    x = images[i:i + batch]
    z, emax, esum, nz = go(jnp.asarray(x), stats, jax.random.fold_in(rng, i))
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    total = flat.sum(0) if total is None else total + flat.sum(0)
    sq = (flat ** 2).sum(0)
    total_sq = sq if total_sq is None else total_sq + sq
    count += flat.shape[0]
    err_max = max(err_max, float(emax))
    err_sum += float(esum)
    err_n += x.size
    nz = np.asarray(nz)
    noise = nz if noise is None else np.maximum(noise, nz)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
  return {"mean": mean, "std": std, "recon_max_abs": err_max,
          "recon_mean_abs": err_sum / err_n,
          "noise_over_scale": noise / np.asarray(stats.scale, np.float64)}


def run_latents(config: ml_collections.ConfigDict, workdir: str | None = None,
                stats_scale: float = 1.0, num: int = DEFAULT_LATENT_NUM
                ) -> Result:
  """The VAE/latent consistency check. Statistics from `workdir` (a run's
  latent_stats.json) if given, else computed as a run would compute them.
  `stats_scale` (test-only fault) multiplies the loaded scale."""
  from txt2img_jax.data import pipeline
  builder = assets.prepare_data(config)
  autoencoder = ae_lib.PixelAutoencoder(config.autoencoder.factor)
  if workdir:
    stats = assets.load_latent_stats(workdir)
    source = os.path.join(workdir, assets.STATS_FILE)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      stats = assets.latent_stats(config, tmp, builder, autoencoder)
    source = (f"computed ({min(config.autoencoder.stats_examples, config.data.num_train)}"
              " train examples, as a run does)")
  if stats_scale != 1.0:
    stats = ae_lib.LatentStats(
        shift=np.asarray(stats.shift, np.float32),
        scale=np.asarray(stats.scale, np.float32) * np.float32(stats_scale))
    source += f", scale x {stats_scale} (fault injection)"
  stats = jax.device_put(stats)

  rng = jax.random.PRNGKey(config.seed + 7)
  splits = {"train": min(num, int(config.data.num_train)),
            "test": min(num, int(config.data.num_test))}
  per_split = {}
  go = _make_latent_fn(autoencoder)
  for k, (split, n) in enumerate(splits.items()):
    images = pipeline.load_split(builder, split, n,
                                 max_len=config.data.max_len)["image"]
    per_split[split] = _channel_stats(go, stats, images,
                                      jax.random.fold_in(rng, k))
  tr = per_split["train"]

  failures = []
  bad_mean = np.flatnonzero(np.abs(tr["mean"]) >= MAX_ABS_MEAN)
  bad_std = np.flatnonzero(np.abs(tr["std"] - 1) >= MAX_STD_DEV)
  bad_noise = np.flatnonzero(tr["noise_over_scale"] >= MAX_NOISE_RATIO)
  if bad_mean.size:
    failures.append(f"|mean| >= {MAX_ABS_MEAN} in channels {bad_mean.tolist()}")
  if bad_std.size:
    failures.append(f"|std - 1| >= {MAX_STD_DEV} in channels "
                    f"{bad_std.tolist()}")
  if bad_noise.size:
    failures.append(f"noise/scale >= {MAX_NOISE_RATIO} in channels "
                    f"{bad_noise.tolist()}")
  worst_recon_max = max(v["recon_max_abs"] for v in per_split.values())
  worst_recon_mean = max(v["recon_mean_abs"] for v in per_split.values())
  if worst_recon_max >= MAX_RECON_ABS:
    failures.append(f"round-trip max |err| {255 * worst_recon_max:.2f}/255 "
                    f">= {255 * MAX_RECON_ABS:.2f}/255")
  if worst_recon_mean >= MAX_RECON_MEAN:
    failures.append(f"round-trip mean |err| {255 * worst_recon_mean:.3f}/255 "
                    f">= {255 * MAX_RECON_MEAN:.2f}/255")

  summary = (f"train latents: mean in [{tr['mean'].min():+.3f}, "
             f"{tr['mean'].max():+.3f}], std in [{tr['std'].min():.3f}, "
             f"{tr['std'].max():.3f}] over {tr['mean'].size} channels; "
             f"round trip max |err| {255 * worst_recon_max:.2f}/255; "
             f"noise/scale <= {tr['noise_over_scale'].max():.2g}")
  passed = not failures
  reason = summary if passed else "; ".join(failures) + " | " + summary
  numbers = {
      "stats_source": source, "stats_scale": stats_scale,
      "num": {s: n for s, n in splits.items()},
      "shift": np.asarray(stats.shift).tolist(),
      "scale": np.asarray(stats.scale).tolist(),
      "path": "ae_lib.encode_latent / decode_latent (shared with the train "
              "step, the latent statistics and the sampler)",
      "thresholds": {"abs_mean": MAX_ABS_MEAN, "abs_std_minus_1": MAX_STD_DEV,
                     "recon_max_abs": MAX_RECON_ABS,
                     "recon_mean_abs": MAX_RECON_MEAN,
                     "noise_over_scale": MAX_NOISE_RATIO},
  }
  for split, v in per_split.items():
    numbers[split] = {k: (np.asarray(x).tolist() if isinstance(x, np.ndarray)
                          else float(x)) for k, x in v.items()}
  result = Result("latents", passed, reason, numbers)
  if workdir:
    with open(os.path.join(workdir, "latents.json"), "w") as f:
      json.dump({"passed": passed, "verdict": result.verdict, **numbers}, f,
                indent=2)
  return result


def latents_table(result: Result) -> str:
  """Per-channel table: train and test mean / std, noise / scale."""
  n = result.numbers
  tr, te = n["train"], n["test"]
  lines = [f"latent stats: {n['stats_source']}",
           f"{'ch':>3} {'shift':>8} {'scale':>7} | {'train mean':>10} "
           f"{'train std':>9} | {'test mean':>9} {'test std':>8} | "
           f"{'noise/scale':>11}"]
  for i in range(len(tr["mean"])):
    flag = ""
    if abs(tr["mean"][i]) >= MAX_ABS_MEAN or abs(tr["std"][i] - 1) >= MAX_STD_DEV:
      flag = "  <-"
    lines.append(
        f"{i:3d} {n['shift'][i]:+8.4f} {n['scale'][i]:7.4f} | "
        f"{tr['mean'][i]:+10.4f} {tr['std'][i]:9.4f} | "
        f"{te['mean'][i]:+9.4f} {te['std'][i]:8.4f} | "
        f"{tr['noise_over_scale'][i]:11.2e}{flag}")
  lines.append(
      f"round trip decode(unstandardize(standardize(sample(encode(x))))) vs x:"
      f" train max |err| {255 * tr['recon_max_abs']:.3f}/255, mean "
      f"{255 * tr['recon_mean_abs']:.4f}/255; test max "
      f"{255 * te['recon_max_abs']:.3f}/255")
  shift_drift = max(abs(m) for m in te["mean"])
  std_drift = max(abs(s - 1) for s in te["std"])
  lines.append(f"test split (report only): max |mean| {shift_drift:.3f}, "
               f"max |std - 1| {std_drift:.3f}")
  lines.append(f"encode/decode path: {n['path']}")
  return "\n".join(lines)


# =============================================================================
# Command line
# =============================================================================

CHECKS = ("overfit", "latents")


def define_flags():
  """Flags of this command only (train.py's entry point defines its own in
  the same process elsewhere)."""
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Recipe file, e.g. configs/restart.py[:tiny].",
      lock_config=False)
  flags.DEFINE_string("workdir", None, "overfit: the run's directory (wiped "
                      "first; default workdirs/health_overfit_<name>). "
                      "latents: a run whose latent_stats.json to check "
                      "(default: compute the statistics).")
  flags.DEFINE_integer("steps", DEFAULT_STEPS, "overfit: train steps (the "
                       "note's 2-3k, scaled to ~5 min of this CPU).")
  flags.DEFINE_integer("subset", NOTE_SUBSET, "overfit: train examples "
                       "(clamped to data.num_train).")
  flags.DEFINE_float("lr_factor", LR_FACTOR, "overfit: LR multiplier.")
  flags.DEFINE_integer("recon_num", DEFAULT_RECON, "overfit: captions "
                       "regenerated for the text-only reconstruction.")
  flags.DEFINE_bool("break_targets", False, "overfit, test only: give each "
                    "caption another example's image (must FAIL).")
  flags.DEFINE_integer("num", DEFAULT_LATENT_NUM, "latents: images per split.")
  flags.DEFINE_float("stats_scale", 1.0, "latents, test only: multiply the "
                     "latent scale by this (3 must FAIL).")


def main(argv):
  from absl import app
  from absl import flags
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in CHECKS:
    raise app.UsageError(f"give one check: {' | '.join(CHECKS)} "
                         f"(got {argv[1:]})", exitcode=2)
  from txt2img_jax import reporting
  reporting.quiet_orbax()
  config = f.config
  if argv[1] == "overfit":
    result = run_overfit(config, f.workdir, f.steps, f.subset,
                         f.break_targets, lr_factor=f.lr_factor,
                         recon_num=f.recon_num)
    n = result.numbers
    print(f"overfit of {n['config']}: {n['steps']} steps, {n['subset']} "
          f"examples, batch {n['batch_size']}, lr x {n['lr_factor']}"
          f"{', BROKEN TARGETS' if n['break_targets'] else ''}")
    print(f"  loss_flow: first {n['loss_flow_first']:.4f}, last-3 mean "
          f"{n['loss_flow_last3']:.4f}, fall {100 * n['fall']:.1f}%")
    print(f"  text-only reconstruction on {n['recon_num']} training captions:"
          f" mse {n['recon_mse']:.5f} vs mean image {n['mean_image_mse']:.5f}"
          f" -> rel {n['rel']:.3f}")
    wd = os.path.abspath(f.workdir or os.path.join(
        "workdirs", f"health_overfit_{config.name}"))
    print(f"  wrote {os.path.join(wd, 'overfit.png')}, overfit.json")
  else:
    result = run_latents(config, f.workdir, f.stats_scale, f.num)
    print(latents_table(result))
  print(result.verdict)
  sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
  from txt2img_jax import cli
  define_flags()
  cli.run(main, required=["config"])
