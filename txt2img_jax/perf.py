"""Train-step throughput against what this machine's XLA matmul can do.

  python -m txt2img_jax.perf --config=configs/perf_b2.py [--steps=20]
      [--json=perf.json] [--matmul_n=8192]

Builds the real train step of a config on synthetic batches (no data
preparation), lowers and compiles it once, and times that compiled
executable. The FLOPs are the model FLOPs counted from the config
(txt2img_jax/flops.py, the PaLM/maxtext MFU convention); XLA's own count
from the same compiled object is printed beside them, with a warning when
the two differ by more than 10% (on GPUs XLA does not count the matmuls it
gives to cuBLAS, and it counts a scanned loop's body once). Utilisation is
achieved model FLOP/s over the FLOP/s of a large matmul in the same dtype,
measured in the same run.

--steps=0 compiles and counts only: for scales too slow to step on a CPU.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import re
import resource
import tempfile
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

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

      r["profile"] = op_profile(compiled, call, profile_steps)
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


# --- Where the step's time goes ----------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*? ([a-z][\w-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_MOVES = {
    "transpose",
    "copy",
    "bitcast",
    "reshape",
    "parameter",
    "broadcast",
    "slice",
    "concatenate",
    "pad",
    "dynamic-slice",
    "constant",
    "iota",
    "dynamic-update-slice",
    "tuple",
    "get-tuple-element",
    "reverse",
}
# Ops whose thunk spans the thunks of the computations they run.
_CONTAINERS = {"while", "conditional", "call"}
_MODULES = ("flow", "text_encoder", "text_head", "image_encoder")


def hlo_op_classes(hlo_text: str) -> dict[str, tuple[str, str, bool, str]]:
  """name -> (op class, model module, in the backward pass, source scope) of
  every instruction of a compiled module's text (`compiled.as_text()`)."""
  computations, current, calls = {}, None, {}
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = computations.setdefault(m.group(1), [])
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, opcode, rest = m.groups()
      current.append(opcode)
      called = re.search(r"calls=%([\w.\-]+)", rest)
      op_name = re.search(r'op_name="([^"]*)"', rest)
      calls[name] = (
          opcode,
          called.group(1) if called else None,
          op_name.group(1) if op_name else "",
          rest,
      )
  out = {}
  # op_name: "jit(f)/transpose(jvp(CrossFlow.velocity))/flow/flow.blocks/...".
  for name, (opcode, called, op_name, rest) in calls.items():
    body = set(computations.get(called, ())) if called else {opcode}
    if opcode in _CONTAINERS:
      kind = "container"
    elif "dot" in body or "__onednn$matmul" in rest or "matmul" in rest.lower():
      kind = "matmul"
    elif "convolution" in body:
      kind = "convolution"
    elif body & {"reduce", "reduce-window", "sort"}:
      kind = "reduction"
    elif body <= _MOVES:
      kind = "data movement"
    else:
      kind = "elementwise"
    module = next(
        (m for m in _MODULES if re.search(rf"(^|/){m}(/|$)", op_name)), "other"
    )
    scope = "/".join(re.sub(r"^jit\([^)]*\)/", "", op_name).split("/")[:3])
    out[name] = (kind, module, "transpose(" in op_name, scope)
  return out


def op_profile(compiled, call, steps: int = 3) -> dict:
  """Seconds per step by op class, model module and pass, from a profiler trace
  of `call()` (which runs `compiled` once) repeated `steps` times.

  Thunks can run concurrently on CPU, so the op seconds may add up to more
  than the step's wall time; 'wall_s' is that time.
  """
  from jax.profiler import ProfileData

  classes = hlo_op_classes(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    jax.block_until_ready(call())
    t0 = time.perf_counter()
    jax.profiler.start_trace(d)
    for _ in range(steps):
      jax.block_until_ready(call())
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / steps
    trace = ProfileData.from_file(
        glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
    )
    by_class, by_op, by_scope = (collections.Counter() for _ in range(3))
    for plane in trace.planes:
      for line in plane.lines:
        for e in line.events:
          if e.name not in classes:
            continue
          kind, module, backward, scope = classes[e.name]
          if kind == "container":
            continue
          seconds = e.duration_ns * 1e-9 / steps
          by_class[
              (kind, module, "backward" if backward else "forward")
          ] += seconds
          by_op[e.name] += seconds
          by_scope[f"{kind} {scope}"] += seconds
  return {
      "wall_s": wall,
      "op_s": sum(by_class.values()),
      "by_class": {" / ".join(k): v for k, v in by_class.most_common()},
      "top_ops": dict(by_op.most_common(15)),
      "top_scopes": dict(by_scope.most_common(25)),
  }


def profile_report(p: dict) -> str:
  total = p["op_s"]
  lines = [
      f"op time {total * 1e3:.1f} ms per step (wall {p['wall_s'] * 1e3:.1f} ms); "
      "by op class / module / pass:"
  ]
  summary = collections.Counter()
  for k, v in p["by_class"].items():
    summary[k.split(" / ")[0]] += v
  lines += [
      f"  {k:<14} {v * 1e3:8.1f} ms {v / total:6.1%}"
      for k, v in summary.most_common()
  ]
  lines += [
      f"    {k:<40} {v * 1e3:8.1f} ms {v / total:6.1%}"
      for k, v in list(p["by_class"].items())[:12]
  ]
  return "\n".join(lines)


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


_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file.")
_STEPS = flags.DEFINE_integer(
    "steps", 20, "Timed steps (0: compile and count only)."
)
_WARMUP = flags.DEFINE_integer(
    "warmup", 3, "Untimed steps before the timed ones."
)
_MATMUL_N = flags.DEFINE_integer(
    "matmul_n",
    0,
    "Side of the reference matmul (0: 2048 on CPU, 8192 elsewhere).",
)
_JSON = flags.DEFINE_string(
    "json", "", "Also write the measurement to this file."
)
_PROFILE = flags.DEFINE_integer(
    "profile", 0, "Also trace this many steps and print where their time goes."
)


def main(argv):
  del argv
  r = measure(
      _CONFIG.value,
      _STEPS.value,
      _WARMUP.value,
      _MATMUL_N.value or None,
      _PROFILE.value,
  )
  logging.info("%s", r)
  print(report(r))
  if "profile" in r:
    print(profile_report(r["profile"]))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(r, f, indent=1)


if __name__ == "__main__":
  from txt2img_jax import cli

  cli.run(main, required=["config"])
