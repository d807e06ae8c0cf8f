"""The latents health check ("VAE 一致性"): is the latent space the flow trains on sound?

The standardised latents of the training encode path have per-channel mean ~ 0 and std ~ 1,
the trainer and the sampler use the same encode / decode path,
decode(unstandardise(standardise(sample(encode(x))))) reconstructs x, and the
reparameterisation noise is small next to the latent scale.
"""

from __future__ import annotations

import json
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from txt2img_jax.train import run_data
from txt2img_jax.train import latent_stats
from txt2img_jax.models import latents
from txt2img_jax.health_checks.result import Result
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.utils import paths

# --- Thresholds (docs/health.md explains each). ------------------------------

DEFAULT_LATENT_NUM = 1024
MAX_ABS_MEAN = 0.1  # |per-channel mean| of the standardised latents.
MAX_STD_DEV = 0.1  # |per-channel std - 1|.
MAX_RECON_ABS = 1.0 / 255  # Round trip, max |error| in [0, 1] pixel units.
MAX_RECON_MEAN = 0.25 / 255  # Round trip, mean |error|.
MAX_NOISE_RATIO = 0.05  # exp(0.5 logvar) / scale, per channel.


def _make_latent_fn(autoencoder):
  """jit(x, stats, key) -> the standardised latents through the train step's
  path, the round trip through the sampler's, and the sample noise. `stats`
  is an argument (not a constant), so one compilation serves every call."""

  def go(x, stats, key):
    # The train step's path and the sampler's: the same two functions.
    params = autoencoder.params
    z = ae_lib.encode_latent(autoencoder, params, x, key, stats)
    back = ae_lib.decode_latent(autoencoder, params, z, stats)
    moments = autoencoder.encode_moments(params, x)
    err = jnp.abs(back - jnp.asarray(x, jnp.float32))
    noise = jnp.exp(0.5 * moments[1]).reshape(-1, moments[1].shape[-1]).max(0)
    return z, err.max(), err.sum(), noise

  return jax.jit(go)


def _channel_stats(
    go, stats, images: np.ndarray, rng: jax.Array, batch: int = 256
) -> dict[str, np.ndarray]:
  """Per-channel mean / std of standardize(sample(encode_moments(x))), the
  round-trip error, and the noise / scale ratio."""
  total = total_sq = None
  count = 0
  err_max, err_sum, err_n = 0.0, 0.0, 0
  noise = None
  for i in range(0, len(images), batch):
    x = images[i : i + batch]
    z, emax, esum, nz = go(jnp.asarray(x), stats, jax.random.fold_in(rng, i))
    flat = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
    total = flat.sum(0) if total is None else total + flat.sum(0)
    sq = (flat**2).sum(0)
    total_sq = sq if total_sq is None else total_sq + sq
    count += flat.shape[0]
    err_max = max(err_max, float(emax))
    err_sum += float(esum)
    err_n += x.size
    nz = np.asarray(nz)
    noise = nz if noise is None else np.maximum(noise, nz)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return {
      "mean": mean,
      "std": std,
      "recon_max_abs": err_max,
      "recon_mean_abs": err_sum / err_n,
      "noise_over_scale": noise / np.asarray(stats.scale, np.float64),
  }


def run_latents(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    stats_scale: float = 1.0,
    num: int = DEFAULT_LATENT_NUM,
) -> Result:
  """The VAE/latent consistency check. Statistics from `workdir` (a run's
  latent_stats.json) if given, else computed as a run would compute them.
  `stats_scale` (test-only fault) multiplies the loaded scale."""
  from txt2img_jax.data import pipeline

  autoencoder = latents.build(config)
  builder = run_data.prepare_data(config, autoencoder)
  if workdir:
    stats = latent_stats.load(workdir)
    source = paths.join(workdir, latent_stats.STATS_FILE)
  else:
    # A local scratch folder: the statistics are only read back here.
    with tempfile.TemporaryDirectory() as tmp:
      stats = latent_stats.compute_or_load(config, tmp, builder, autoencoder)
    source = (
        f"computed ({min(config.autoencoder.stats_examples, builder.split_size('train'))}"
        " train examples, as a run does)"
    )
  if stats_scale != 1.0:
    stats = ae_lib.LatentStats(
        shift=np.asarray(stats.shift, np.float32),
        scale=np.asarray(stats.scale, np.float32) * np.float32(stats_scale),
    )
    source += f", scale x {stats_scale} (fault injection)"
  stats = jax.device_put(stats)

  rng = jax.random.PRNGKey(config.seed + 7)
  # Reported as "test": the data's first held-out split (shapes: test;
  # a user's data: val).
  held_out = next(iter(builder.EVAL_SPLITS.values()))
  splits = {
      "train": ("train", min(num, builder.split_size("train"))),
      "test": (held_out, min(num, builder.split_size(held_out))),
  }
  per_split = {}
  go = _make_latent_fn(autoencoder)
  for k, (label, (split, n)) in enumerate(splits.items()):
    images = pipeline.load_split(
        builder, split, n, max_len=config.data.max_len
    )["image"]
    per_split[label] = _channel_stats(
        go, stats, images, jax.random.fold_in(rng, k)
    )
  tr = per_split["train"]

  failures = []
  bad_mean = np.flatnonzero(np.abs(tr["mean"]) >= MAX_ABS_MEAN)
  bad_std = np.flatnonzero(np.abs(tr["std"] - 1) >= MAX_STD_DEV)
  bad_noise = np.flatnonzero(tr["noise_over_scale"] >= MAX_NOISE_RATIO)
  if bad_mean.size:
    failures.append(f"|mean| >= {MAX_ABS_MEAN} in channels {bad_mean.tolist()}")
  if bad_std.size:
    failures.append(
        f"|std - 1| >= {MAX_STD_DEV} in channels " f"{bad_std.tolist()}"
    )
  if bad_noise.size:
    failures.append(
        f"noise/scale >= {MAX_NOISE_RATIO} in channels " f"{bad_noise.tolist()}"
    )
  worst_recon_max = max(v["recon_max_abs"] for v in per_split.values())
  worst_recon_mean = max(v["recon_mean_abs"] for v in per_split.values())
  if worst_recon_max >= MAX_RECON_ABS:
    failures.append(
        f"round-trip max |err| {255 * worst_recon_max:.2f}/255 "
        f">= {255 * MAX_RECON_ABS:.2f}/255"
    )
  if worst_recon_mean >= MAX_RECON_MEAN:
    failures.append(
        f"round-trip mean |err| {255 * worst_recon_mean:.3f}/255 "
        f">= {255 * MAX_RECON_MEAN:.2f}/255"
    )

  summary = (
      f"train latents: mean in [{tr['mean'].min():+.3f}, "
      f"{tr['mean'].max():+.3f}], std in [{tr['std'].min():.3f}, "
      f"{tr['std'].max():.3f}] over {tr['mean'].size} channels; "
      f"round trip max |err| {255 * worst_recon_max:.2f}/255; "
      f"noise/scale <= {tr['noise_over_scale'].max():.2g}"
  )
  passed = not failures
  reason = summary if passed else "; ".join(failures) + " | " + summary
  numbers = {
      "stats_source": source,
      "stats_scale": stats_scale,
      "num": {s: n for s, n in splits.items()},
      "shift": np.asarray(stats.shift).tolist(),
      "scale": np.asarray(stats.scale).tolist(),
      "path": "ae_lib.encode_latent / decode_latent (shared with the train "
      "step, the latent statistics and the sampler)",
      "thresholds": {
          "abs_mean": MAX_ABS_MEAN,
          "abs_std_minus_1": MAX_STD_DEV,
          "recon_max_abs": MAX_RECON_ABS,
          "recon_mean_abs": MAX_RECON_MEAN,
          "noise_over_scale": MAX_NOISE_RATIO,
      },
  }
  for split, v in per_split.items():
    numbers[split] = {
        k: (np.asarray(x).tolist() if isinstance(x, np.ndarray) else float(x))
        for k, x in v.items()
    }
  result = Result("latents", passed, reason, numbers)
  if workdir:
    paths.write_text(
        paths.join(workdir, "latents.json"),
        json.dumps(
            {"passed": passed, "verdict": result.verdict, **numbers}, indent=2
        ),
    )
  return result


def latents_table(result: Result) -> str:
  """Per-channel table: train and test mean / std, noise / scale."""
  n = result.numbers
  tr, te = n["train"], n["test"]
  lines = [
      f"latent stats: {n['stats_source']}",
      f"{'ch':>3} {'shift':>8} {'scale':>7} | {'train mean':>10} "
      f"{'train std':>9} | {'test mean':>9} {'test std':>8} | "
      f"{'noise/scale':>11}",
  ]
  for i in range(len(tr["mean"])):
    flag = ""
    if (
        abs(tr["mean"][i]) >= MAX_ABS_MEAN
        or abs(tr["std"][i] - 1) >= MAX_STD_DEV
    ):
      flag = "  <-"
    lines.append(
        f"{i:3d} {n['shift'][i]:+8.4f} {n['scale'][i]:7.4f} | "
        f"{tr['mean'][i]:+10.4f} {tr['std'][i]:9.4f} | "
        f"{te['mean'][i]:+9.4f} {te['std'][i]:8.4f} | "
        f"{tr['noise_over_scale'][i]:11.2e}{flag}"
    )
  lines.append(
      f"round trip decode(unstandardize(standardize(sample(encode(x))))) vs x:"
      f" train max |err| {255 * tr['recon_max_abs']:.3f}/255, mean "
      f"{255 * tr['recon_mean_abs']:.4f}/255; test max "
      f"{255 * te['recon_max_abs']:.3f}/255"
  )
  shift_drift = max(abs(m) for m in te["mean"])
  std_drift = max(abs(s - 1) for s in te["std"])
  lines.append(
      f"test split (report only): max |mean| {shift_drift:.3f}, "
      f"max |std - 1| {std_drift:.3f}"
  )
  lines.append(f"encode/decode path: {n['path']}")
  return "\n".join(lines)
