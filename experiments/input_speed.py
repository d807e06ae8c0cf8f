"""Is the input pipeline the bottleneck? Host time per batch vs step time.

  python -m experiments.input_speed --config=configs/folder.py \
      --config.data.path=my_images [--batches=100] [--steps=10]

Prepares the configured data (once), then times (1) `batches` batches of the
real input pipeline on the host (decode, caption choice, tokenizer, batching
on the configured read threads) and (2) the real train step on those
batches. With a latent space that has weights (a KL-VAE) and cached moments,
it also times the step on pixel batches that run the frozen encoder in the
step, which is what the moments cache saves.

The host number is a throughput: up to `data.prefetch` batches were made
before the timed window opened, so it reads low by at most prefetch/batches
(4% at the defaults).
"""

from __future__ import annotations

import json
import time

from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import validate
from txt2img_jax.train import run_data
from txt2img_jax import cli
from txt2img_jax.models import latents
from txt2img_jax.utils import reporting
from txt2img_jax.train import sharding
from txt2img_jax.train import step as step_lib
from txt2img_jax.data import pipeline
from txt2img_jax.models import autoencoder as ae_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")
_BATCHES = flags.DEFINE_integer("batches", 100, "Host batches timed.")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps timed.")
_JSON = flags.DEFINE_string("json", "", "Also write the numbers here.")


def time_steps(config, parts, batch, steps: int) -> float:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  tx, schedules, state, shardings = state_lib.create_train_state(
      config, parts.model, parts.latent_shape, parts.text.width, mesh, rules
  )
  step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules),
      shardings,
      mesh,
      validate.train_compiler_options(config),
  )
  frozen = jax.device_put(parts.frozen)
  c = parts.latent_shape[-1]
  stats = jax.device_put(
      ae_lib.LatentStats(
          shift=np.zeros((c,), np.float32), scale=np.ones((c,), np.float32)
      )
  )
  batch = sharding.put_batch(batch, mesh)
  with mesh:
    state, m = step(state, batch, frozen, stats)  # Compile + first step.
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch, frozen, stats)
    jax.block_until_ready(m)
  return (time.perf_counter() - t0) / steps


def main(argv):
  del argv
  reporting.quiet_orbax()
  config = _CONFIG.value
  autoencoder = latents.build(config)
  data = run_data.prepare_data(config, autoencoder)
  parts = run_lib.build_parts(config, None, data, autoencoder)
  it = run_data.train_batches(config, data, parts.text, 0)
  first = next(it)
  next(it)
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  host = (time.perf_counter() - t0) / _BATCHES.value
  out = {
      "batch_size": config.batch_size,
      "host_s_per_batch": host,
      "read_threads": config.data.read_threads,
      "prefetch": config.data.prefetch,
      "batches_timed": _BATCHES.value,
      "step_s": time_steps(config, parts, first, _STEPS.value),
  }
  if "moments_mean" in first:
    pixels = pipeline.load_split(
        data,
        "train",
        config.batch_size,
        tokenizer=parts.text.tokenizer,
        max_len=config.data.max_len,
    )
    out["step_s_encoder_in_step"] = time_steps(
        config,
        parts,
        {k: pixels[k] for k in ("image", "ids", "mask")},
        _STEPS.value,
    )
    out["cache_speedup"] = out["step_s_encoder_in_step"] / out["step_s"]
  out["host_over_step"] = host / out["step_s"]
  print(json.dumps(out, indent=1))
  print(
      f"host {1e3 * host:.1f} ms/batch vs step {1e3 * out['step_s']:.1f} "
      f"ms: the input pipeline takes {out['host_over_step']:.2f} of a step "
      f"({config.data.read_threads} read threads, overlapped with it)"
  )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  cli.run(main, required=["config"])
