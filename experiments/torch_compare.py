"""The flow network's train step in JAX against the same network in PyTorch eager.

  python -m experiments.torch_compare [--sizes=default,mid]
      [--repeats=5] [--round_steps=3] [--threads=2] [--out=F.json]
      [--xla_option=none] [--xla_option=xla_cpu_enable_fast_math=true ...]
      [--jax_only]

Both sides build the DiT of `models/dit.py` at a recipe's sizes (patch
embedding, fixed sin-cos positions, time MLP, indicator embedding, adaLN-Zero
blocks, adaLN final layer) and run forward, MSE to a target, backward and
AdamW: JAX as one jitted step (compiled with the recipe's `xla_cpu_options`,
as the trainer compiles its step), PyTorch eagerly on `--threads` threads. The
two are timed interleaved (JAX, then PyTorch, `--repeats` times) so that load
from other processes falls on both alike, and the medians are reported with
the XLA float32 matmul rate measured in the same process between them.

Sizes: `default` is configs/restart.py (width 192, depth 4, 64 tokens, batch
64); `mid` is width 384, depth 6, 6 heads, 256 tokens (64 px), batch 32.

PyTorch is an optional benchmark dependency (requirements.txt pins the CPU
build for tests); nothing in txt2img_jax imports it. The two steps are
flow_steps.py's; this module times them and reports.
"""

from __future__ import annotations

import json
import math
import statistics
import time

from absl import flags
import jax.numpy as jnp

from txt2img_jax.train import validate
from txt2img_jax.models import latents
from txt2img_jax.train import throughput
from experiments import flow_steps


def variant_options(text: str, base: dict) -> dict:
  """An --xla_option: 'none' (XLA's defaults), else 'name=value[;...]' on top
  of `base` (the options the trainer compiles its step with)."""
  if text == "none":
    return {}
  try:
    return {**base, **validate.parse_xla_options(text)}
  except ValueError as e:
    raise ValueError(f"--xla_option={text!r}: {e}") from None


def compare(
    size: str,
    repeats: int = 5,
    steps: int = 3,
    threads: int = 2,
    recipe: str = "restart",
    with_torch: bool = True,
    variants: dict[str, dict] | None = None,
) -> dict:
  """Times the JAX step (and each variant: XLA options) and the PyTorch one,
  interleaved round by round."""
  config = flow_steps.size_config(size, recipe)
  latent_shape = latents.latent_shape(config)
  data = flow_steps.synthetic(config, latent_shape)
  # As training compiles its step: with the config's XLA options.
  base = validate.train_compiler_options(config) or {}
  t0 = time.perf_counter()
  compiled, state, batch, jax_count = flow_steps.jax_step(
      config, latent_shape, data, base
  )
  compile_s = time.perf_counter() - t0
  _, state = flow_steps.time_jax(compiled, state, batch, 1)  # Warm-up.
  others = {}
  for name, text in (variants or {}).items():
    options = variant_options(text, base)
    v_compiled, v_state, _, _ = flow_steps.jax_step(
        config, latent_shape, data, options
    )
    _, v_state = flow_steps.time_jax(v_compiled, v_state, batch, 1)
    others[name] = [v_compiled, v_state, []]
  if with_torch:
    torch = flow_steps.import_torch()
    torch.set_num_threads(threads)
    t_step, torch_count = flow_steps.torch_step(
        torch, config, latent_shape, data
    )
    if torch_count != jax_count:
      raise AssertionError(
          f"parameter counts differ: JAX {jax_count}, " f"PyTorch {torch_count}"
      )
    flow_steps.time_torch(t_step, 1)  # Warm-up.
  jax_s, torch_s, matmul = [], [], []
  for _ in range(repeats):
    dt, state = flow_steps.time_jax(compiled, state, batch, steps)
    jax_s.append(dt)
    for v in others.values():
      v_dt, v[1] = flow_steps.time_jax(v[0], v[1], batch, steps)
      v[2].append(v_dt)
    matmul.append(
        throughput.matmul_flops_per_s(jnp.float32, 2048, min_seconds=0.5)
    )
    if with_torch:
      torch_s.append(flow_steps.time_torch(t_step, steps))
  model_flops = flow_steps.flow_step_flops(config, latent_shape)
  jax_med = statistics.median(jax_s)
  matmul_med = statistics.median(matmul)
  r = {
      "size": size,
      "width": config.flow.width,
      "depth": config.flow.depth,
      "heads": config.flow.num_heads,
      "batch": config.batch_size,
      "tokens": math.prod(latent_shape[:2]) // config.flow.patch_size**2,
      "params": jax_count,
      "compile_s": compile_s,
      "model_flops": model_flops,
      "jax_s": jax_med,
      "jax_all_s": jax_s,
      "matmul_flops_per_s": matmul_med,
      "matmul_all": matmul,
      "jax_utilisation": model_flops / jax_med / matmul_med,
      "repeats": repeats,
      "steps": steps,
      "threads": threads,
      "xla_options": base,
      "variants": {
          name: {
              "options": variant_options(variants[name], base),
              "jax_s": statistics.median(v[2]),
              "jax_all_s": v[2],
          }
          for name, v in others.items()
      },
  }
  if with_torch:
    torch_med = statistics.median(torch_s)
    r.update(
        {
            "torch_s": torch_med,
            "torch_all_s": torch_s,
            "torch_utilisation": model_flops / torch_med / matmul_med,
            "torch_over_jax": torch_med / jax_med,
            "torch_version": torch.__version__,
        }
    )
  return r


def report(r: dict) -> str:
  lines = [
      f"{r['size']}: width {r['width']}, depth {r['depth']}, {r['heads']} heads, "
      f"{r['tokens']} tokens, batch {r['batch']}, {r['params'] / 1e6:.2f} M params, "
      f"{r['model_flops'] / 1e9:.1f} GFLOP/step",
      f"  JAX     {r['jax_s']:.3f} s/step (median of {r['repeats']} x "
      f"{r['steps']}; {min(r['jax_all_s']):.3f}-{max(r['jax_all_s']):.3f}), "
      f"{r['jax_utilisation']:.2f} of the matmul rate; compile {r['compile_s']:.1f} s"
      + "".join(f"; {k}={v}" for k, v in r.get("xla_options", {}).items()),
  ]
  if "torch_s" in r:
    lines.append(
        f"  PyTorch {r['torch_s']:.3f} s/step ({min(r['torch_all_s']):.3f}-"
        f"{max(r['torch_all_s']):.3f}), {r['torch_utilisation']:.2f} of the "
        f"matmul rate; PyTorch/JAX time {r['torch_over_jax']:.2f}"
    )
  for name, v in r["variants"].items():
    lines.append(
        f"  JAX with {name}: {v['jax_s']:.3f} s/step "
        f"({min(v['jax_all_s']):.3f}-{max(v['jax_all_s']):.3f}), "
        f"{v['jax_s'] / r['jax_s']:.2f}x the plain JAX time"
    )
  lines.append(
      f"  XLA f32 2048^3 matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
      f"(median; {min(r['matmul_all']) / 1e9:.1f}-"
      f"{max(r['matmul_all']) / 1e9:.1f})"
  )
  return "\n".join(lines)


_SIZES = flags.DEFINE_list(
    "sizes", ["default", "mid"], f"Of {sorted(flow_steps.SIZES)}."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved JAX/PyTorch rounds.")
_STEPS = flags.DEFINE_integer("round_steps", 3, "Steps per side per round.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
_RECIPE = flags.DEFINE_string(
    "recipe", "restart", "configs/<recipe>.py to size from."
)
_XLA_OPTIONS = flags.DEFINE_multi_string(
    "xla_option",
    [],
    "Also time the JAX step compiled with these XLA options "
    "(xla_<name>=<value>[;...], on top of the config's xla_cpu_options; 'none': "
    "XLA's defaults; repeatable, one variant each), interleaved.",
)
_NO_TORCH = flags.DEFINE_bool("jax_only", False, "Time the JAX step alone.")
_JSON = flags.DEFINE_string("out", "", "Also write the results (JSON) here.")


def main(argv):
  del argv
  results = []
  for size in _SIZES.value:
    variants = {o: o for o in _XLA_OPTIONS.value}
    for o in variants.values():
      variant_options(o, {})  # A bad option fails before anything runs.
    r = compare(
        size,
        _REPEATS.value,
        _STEPS.value,
        _THREADS.value,
        _RECIPE.value,
        with_torch=not _NO_TORCH.value,
        variants=variants,
    )
    print(report(r), flush=True)
    results.append(r)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  from txt2img_jax import cli

  cli.run(main)
