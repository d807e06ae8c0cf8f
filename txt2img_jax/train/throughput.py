"""Train-step throughput against what this machine's XLA matmul can do.

Its command is `python -m txt2img_jax.perf`.

Builds the real train step of a config on synthetic batches (no data
preparation), lowers and compiles it once, and times that compiled
executable. The FLOPs are the model FLOPs counted from the config
(train/flops.py, the PaLM/maxtext MFU convention); XLA's own count
from the same compiled object is printed beside them, with a warning when
the two differ by more than 10% (on GPUs XLA does not count the matmuls it
gives to cuBLAS, and it counts a scanned loop's body once). Utilisation is
achieved model FLOP/s over the FLOP/s of a large matmul in the same dtype,
measured in the same run.

--steps=0 compiles and counts only: for scales too slow to step on a CPU.
"""

from __future__ import annotations

import math
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import validate
from txt2img_jax.train import flops as flops_lib
from txt2img_jax.utils import hostmem
from txt2img_jax.train import sharding
from txt2img_jax.train import step as step_lib
from txt2img_jax.data import negatives
from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.train import op_profile

MISMATCH_TOLERANCE = 0.10


def default_matmul_n(platform: str) -> int:
  # Large enough to reach the peak on each kind of device, small enough to
  # take about a second on a laptop CPU.
  return 2048 if platform == "cpu" else 8192


def matmul_flops_per_s(dtype, n: int, min_seconds: float = 1.0) -> float:
  """FLOP/s of an n x n x n matmul in `dtype` on the default device."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  f(a, b).block_until_ready()
  t0 = time.perf_counter()
  f(a, b).block_until_ready()
  once = time.perf_counter() - t0
  repeats = int(min(200, max(3, math.ceil(min_seconds / max(once, 1e-6)))))
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - t0)


def xla_flops(compiled) -> float:
  """FLOPs of one call by XLA's cost analysis of a compiled executable."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def synthetic_inputs(config, latent_shape, tok, mesh):
  """A batch of real captions and uniform-noise images, and identity stats."""
  b, s = config.batch_size, config.data.image_size
  rng = np.random.default_rng(0)
  captions = [shapes.example(0, "train", i)["caption"] for i in range(b)]
  ids, mask = tokenizer_lib.tokenize(tok, captions, config.data.max_len)
  arrays = {
      "image": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
      "ids": ids,
      "mask": mask,
  }
  if config.loss.hard_negatives:
    spec = config.loss.hard_negative_words
    classes = (
        negatives.parse_word_classes(spec) if spec else shapes.word_classes()
    )
    negs = [negatives.negative_caption(c, classes, rng) or c for c in captions]
    arrays["neg_ids"], arrays["neg_mask"] = tokenizer_lib.tokenize(
        tok, negs, config.data.max_len
    )
  batch = sharding.put_batch(arrays, mesh)
  c = latent_shape[-1]
  stats = ae_lib.LatentStats(
      shift=np.zeros((c,), np.float32), scale=np.ones((c,), np.float32)
  )
  return batch, stats


def measure(
    config,
    steps: int = 20,
    warmup: int = 3,
    matmul_n: int | None = None,
    profile_steps: int = 0,
) -> dict:
  """Compiles the train step once and times that executable `steps` times."""
  parts = run_lib.build_parts(config)
  latent_shape, tok = parts.latent_shape, parts.text.tokenizer
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  t0 = time.perf_counter()
  tx, schedules, state, state_shardings = state_lib.create_train_state(
      config, parts.model, latent_shape, parts.text.width, mesh, rules
  )
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  options = validate.train_compiler_options(config)
  step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules),
      state_shardings,
      mesh,
      options,
      rules,
  )
  batch, stats = synthetic_inputs(config, latent_shape, tok, mesh)
  frozen = jax.device_put(parts.frozen)

  with mesh:
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = step.lower(state, batch, frozen, stats)
    lower_s = time.perf_counter() - t0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    # CPU seconds of this process: on a shared machine they say what the
    # compile costs when wall time also counts waiting for a core.
    compile_cpu_s = time.process_time() - c0
  model_flops, per_row = flops_lib.train_step_flops(config, latent_shape)
  counted_by_xla = xla_flops(compiled)
  platform = jax.devices()[0].platform
  r = {
      "config": config.name,
      "platform": platform,
      "device_kind": jax.devices()[0].device_kind,
      "devices": jax.device_count(),
      "dtype": str(config.dtype),
      "batch_size": config.batch_size,
      "jax": jax.__version__,
      "flow_scan": bool(config.flow.scan),
      "flow_remat": str(config.flow.remat),
      "xla_options": options or {},
      "host_malloc": hostmem.applied,
      "init_s": init_s,
      "lower_s": lower_s,
      "compile_s": compile_s,
      "compile_cpu_s": compile_cpu_s,
      "model_flops": model_flops,
      "xla_flops": counted_by_xla,
      "xla_over_model": counted_by_xla / model_flops,
      "model_flops_by_module": flops_lib.by_module(per_row),
      "model_flops_by_part": per_row,
      "steps": steps,
      "step_time_s": None,
      "steps_per_sec": None,
      "achieved_flops_per_s": None,
      "matmul_n": None,
      "matmul_flops_per_s": None,
      "utilisation": None,
  }
  if steps <= 0:
    return r

  with mesh:
    # The compiled executable itself: no second compilation, no cache look-up.
    for _ in range(warmup):
      state, metrics = compiled(state, batch, frozen, stats)
    jax.block_until_ready(state)
    t0, u0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
      state, metrics = compiled(state, batch, frozen, stats)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    if profile_steps:

      def call():
        nonlocal state
        state, m = compiled(state, batch, frozen, stats)
        return m

      r["profile"] = op_profile.op_profile(compiled, call, profile_steps)
  n = matmul_n or default_matmul_n(platform)
  peak = matmul_flops_per_s(jnp.dtype(config.dtype), n)
  r.update(
      {
          "step_time_s": dt,
          "steps_per_sec": 1 / dt,
          "achieved_flops_per_s": model_flops / dt,
          "matmul_n": n,
          "matmul_flops_per_s": peak,
          "utilisation": model_flops / dt / (peak * jax.device_count()),
          # The host's side of a step: page faults and kernel time (hostmem).
          "page_faults_per_step": (u1.ru_minflt - u0.ru_minflt) / steps,
          "system_cpu_per_step_s": (u1.ru_stime - u0.ru_stime) / steps,
      }
  )
  return r


def mismatch_warning(r: dict) -> str | None:
  ratio = r["xla_over_model"]
  if math.isfinite(ratio) and abs(ratio - 1) <= MISMATCH_TOLERANCE:
    return None
  if r["flow_scan"]:
    why = (
        " (XLA counts the body of the scanned DiT blocks once, not once"
        " per layer; --config.flow.scan=False to cross-check)"
    )
  elif r["platform"] == "gpu":
    why = " (XLA does not count the matmuls it hands to cuBLAS on GPUs)"
  else:
    why = " (at small widths XLA's elementwise work is a large share)"
  return (
      f"WARNING: XLA counts {r['xla_flops'] / 1e9:.1f} GFLOP per step, "
      f"{ratio:.2f}x the model count{why}"
  )


def report(r: dict) -> str:
  g = 1e9
  lines = [
      f"{r['config']}: {r['platform']} ({r['device_kind']}) x{r['devices']}, "
      f"{r['dtype']}, batch {r['batch_size']}, jax {r['jax']}"
      + "".join(f", {k}={v}" for k, v in r.get("xla_options", {}).items()),
      f"compile {r['compile_s']:.1f} s (lower {r['lower_s']:.1f} s; "
      f"{r['compile_cpu_s']:.1f} s of CPU), "
      f"state init {r['init_s']:.1f} s",
      f"model {r['model_flops'] / g:.1f} GFLOP/step, XLA "
      f"{r['xla_flops'] / g:.1f} GFLOP/step (x{r['xla_over_model']:.2f})",
      "  by module: "
      + ", ".join(
          f"{k} {v / g:.1f}" for k, v in r["model_flops_by_module"].items()
      ),
  ]
  if r["step_time_s"] is not None:
    lines.append(
        f"{r['steps_per_sec']:.2f} steps/s ({r['step_time_s'] * 1e3:.1f} ms), "
        f"{r['achieved_flops_per_s'] / g:.1f} GFLOP/s achieved vs "
        f"{r['matmul_flops_per_s'] / g:.1f} GFLOP/s {r['matmul_n']}^3 matmul "
        f"per device -> utilisation {r['utilisation']:.3f}"
    )
    lines.append(
        f"host: {r['page_faults_per_step']:.0f} page faults and "
        f"{r['system_cpu_per_step_s'] * 1e3:.1f} ms of system CPU per step "
        f"(allocator: {r['host_malloc']})"
    )
  warning = mismatch_warning(r)
  if warning:
    lines.append(warning)
  return "\n".join(lines)
