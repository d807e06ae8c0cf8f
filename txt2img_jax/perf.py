"""Train-step throughput against what this machine's XLA matmul can do.

  python -m txt2img_jax.perf --config=configs/restart.py [--steps=20]

Builds the real train step of a config on synthetic batches (no data
preparation), counts its FLOPs from XLA's cost analysis, times it, and times
a large matmul in the same dtype. Prints steps/s, achieved FLOP/s, the matmul
peak and their ratio (the model-FLOPs utilisation against this machine).
"""

from __future__ import annotations

import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from txt2img_jax import assembly
from txt2img_jax import sharding
from txt2img_jax import step as step_lib
from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib


def matmul_peak(dtype, n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n x n x n matmul on the default device."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def step_flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def measure(config, steps: int = 20, warmup: int = 3) -> dict:
  parts = assembly.build_parts(config)
  latent_shape, tok = parts.latent_shape, parts.text.tokenizer
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules)
  tx, schedules, state, state_shardings = assembly.create_train_state(
      config, parts.model, latent_shape, parts.text.width, mesh, rules)
  step = assembly.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules), state_shardings, mesh)
  b, s = config.batch_size, config.data.image_size
  rng = np.random.default_rng(0)
  captions = [shapes.example(0, "train", i)["caption"] for i in range(b)]
  ids, mask = tokenizer_lib.tokenize(tok, captions, config.data.max_len)
  batch = sharding.put_batch({
      "image": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
      "ids": ids, "mask": mask}, mesh)
  c = latent_shape[-1]
  stats = ae_lib.LatentStats(shift=np.zeros((c,), np.float32),
                             scale=np.ones((c,), np.float32))
  frozen = parts.frozen
  flops = step_flops(step, state, batch, frozen, stats)
  with mesh:
    for _ in range(warmup):
      state, metrics = step(state, batch, frozen, stats)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch, frozen, stats)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
  peak = matmul_peak(jnp.dtype(config.dtype))
  return {
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "batch_size": b, "step_time_s": dt, "steps_per_sec": 1 / dt,
      "step_gflops": flops / 1e9, "achieved_gflops_per_s": flops / dt / 1e9,
      "matmul_peak_gflops_per_s": peak / 1e9,
      "utilisation": flops / dt / (peak * jax.device_count()),
  }


_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")


def main(argv):
  del argv
  r = measure(_CONFIG.value, _STEPS.value)
  logging.info("%s", r)
  print(f"{r['platform']} x{r['devices']}, batch {r['batch_size']}: "
        f"{r['steps_per_sec']:.2f} steps/s, {r['step_gflops']:.1f} GFLOP/step,"
        f" {r['achieved_gflops_per_s']:.1f} GFLOP/s achieved vs "
        f"{r['matmul_peak_gflops_per_s']:.1f} GFLOP/s matmul peak per device "
        f"-> utilisation {r['utilisation']:.2f}")


if __name__ == "__main__":
  from txt2img_jax import cli
  cli.run(main, required=["config"])
