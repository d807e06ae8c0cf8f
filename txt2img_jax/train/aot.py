"""The train step compiled ahead of time for devices this host does not have.

Its command is `python -m txt2img_jax.aot`.

With libtpu installed (the `tpu` extra, in a venv of its own), jax describes
the devices of a named TPU topology ("v5e:8x8") on a CPU host; the train step
is built as training builds it (`run.build_model`, `state.train_state_spec`,
`step.for_parts`, `state.jit_train_step`: the same code, on shapes only) and
compiled for those devices. Nothing runs and no weights are read: the frozen
networks (a KL-VAE, a CLIP/T5 text encoder) come from their config.json.

What the compiled program tells:
  memory   per device: arguments, outputs, temporaries, and the peak they
           imply (arguments + outputs - donated + temporaries + code), against
           the chip's HBM. XLA refuses to compile a program that does not fit,
           and says by how much; that is reported as "does not fit".
  cost     XLA's TPU cost model: FLOPs and its step time ("optimal_seconds":
           the time the program needs if each op runs at the chip's roofline,
           with no stalls between ops, no input pipeline and no host work),
           and the MFU that time implies for the model FLOPs (train/flops.py).
  traffic  the collectives in the compiled HLO (all-gather, reduce-scatter,
           all-reduce, ...): how many, and the bytes they produce per device
           per step.
XLA counts the body of a loop once, not once per iteration, so for a config
with a scanned DiT (flow.scan) the cost and traffic figures come from the
same step unrolled at depth 1 and 2, extrapolated to the full depth (each
block adds the same); the memory figures are those of the program training
runs.
These are compiler estimates, not measurements (docs/performance.md).

This module compiles the step and gathers and prints the figures; the step
is built and lowered from shapes in aot_lower.py, the chips' figures and the
reading of the compiled program are in aot_tpu.py, and the search for the
largest batch that fits is in aot_max_batch.py.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import jax

from txt2img_jax.models import latents
from txt2img_jax.train import aot_lower, aot_tpu
from txt2img_jax.train import flops as flops_lib
from txt2img_jax.train.aot_tpu import GiB, TIGHT


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def compile_step(config, devices, vocab_size: int = 32000) -> dict:
  """Compiles `config`'s train step for `devices`; the figures, or
  {"fits": False, "error": ...} when XLA finds it does not fit."""
  t0 = time.perf_counter()
  lowered, parts, mesh, sizes = aot_lower.lower_train_step(
      config, devices, vocab_size
  )
  lower_s = time.perf_counter() - t0
  r = {
      "state_bytes": sizes["state"],
      "frozen_bytes": sizes["frozen"],
      "batch_size": config.batch_size,
      "per_device_batch": config.batch_size / mesh.shape["data"],
      "mesh": dict(mesh.shape),
      "preset": config.mesh.preset or "data parallel",
      "latent_shape": list(parts.latent_shape),
      "lower_s": lower_s,
  }
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    why = aot_tpu.out_of_memory(e)
    if why is None:
      raise
    r.update(fits=False, error=why, compile_s=time.perf_counter() - t0)
    return r
  r["compile_s"] = time.perf_counter() - t0
  m = compiled.memory_analysis()
  mem = {
      "argument": m.argument_size_in_bytes,
      "output": m.output_size_in_bytes,
      "alias": m.alias_size_in_bytes,
      "temp": m.temp_size_in_bytes,
      "code": m.generated_code_size_in_bytes,
  }
  mem["peak"] = (
      mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["code"]
  )
  r["memory"] = mem
  chip = aot_tpu.chip_of(devices[0])
  if chip:
    r["hbm_bytes"] = chip.hbm_bytes
    r["hbm_used"] = mem["peak"] / chip.hbm_bytes
  r["fits"] = True
  r["cost"] = _cost(compiled)
  r["collectives"] = aot_tpu.collectives(compiled.as_text())
  return r


def unrolled(config, depth: int):
  """`config` with an unrolled DiT of `depth` blocks."""
  c = copy.deepcopy(config)
  c.flow.scan = False
  c.flow.depth = depth
  return c


def _line(one: float, two: float, depth: int) -> float:
  """The figure at `depth` blocks from those at 1 and 2: each block adds
  the same."""
  return one + (depth - 1) * (two - one)


def scanned_cost(config, devices, vocab_size: int = 32000) -> dict:
  """Cost and traffic of a scanned DiT's step, which XLA counts with the
  loop body once: extrapolated from the same step unrolled at depth 1 and 2
  (shallow, so they compile fast and fit where the full unrolled one may
  not). {"fits": False, ...} if even those do not fit."""
  one = compile_step(unrolled(config, 1), devices, vocab_size)
  two = compile_step(unrolled(config, 2), devices, vocab_size)
  out = {"compile_s": one["compile_s"] + two["compile_s"]}
  if not (one["fits"] and two["fits"]):
    out.update(fits=False, error=(one.get("error") or two.get("error")))
    return out
  depth = config.flow.depth
  cost = {
      k: _line(one["cost"][k], two["cost"][k], depth)
      for k in ("flops", "bytes accessed", "optimal_seconds")
      if k in one["cost"] and k in two["cost"]
  }
  traffic = {
      kind: {
          k: round(
              _line(
                  one["collectives"][kind][k],
                  two["collectives"][kind][k],
                  depth,
              )
          )
          for k in ("count", "bytes")
      }
      for kind in aot_tpu.COLLECTIVES
  }
  out.update(fits=True, cost=cost, collectives=traffic)
  return out


def report(config, devices, topology: str, vocab_size: int = 32000) -> dict:
  """Everything the command prints: memory of the program training runs,
  cost and traffic of its unrolled twin when the DiT is scanned."""
  d = devices[0]
  chip = aot_tpu.chip_of(d)
  model_flops, _ = flops_lib.train_step_flops(
      config, latents.latent_shape(config)
  )
  r = {
      "config": config.name,
      "topology": topology,
      "device_kind": d.device_kind,
      "devices": len(devices),
      "chip": dataclasses.asdict(chip) if chip else None,
      "dtype": str(config.dtype),
      "jax": jax.__version__,
      "flow_scan": bool(config.flow.scan),
      "flow_remat": str(config.flow.remat),
      "model_flops": model_flops,
  }
  main = compile_step(config, devices, vocab_size)
  r.update(main)
  if not main["fits"]:
    return r
  if config.flow.scan and config.flow.depth > 1:
    costed = scanned_cost(config, devices, vocab_size)
    r["unrolled"] = {k: costed.get(k) for k in ("fits", "compile_s", "error")}
    if not costed["fits"]:
      # Scanned figures count the DiT once: not a step's.
      r.pop("cost"), r.pop("collectives")
      return r
    r["cost"], r["collectives"] = costed["cost"], costed["collectives"]
  flops = r["cost"].get("flops", float("nan"))
  r["xla_flops"] = flops * len(devices)
  r["xla_over_model"] = r["xla_flops"] / model_flops
  optimal = r["cost"].get("optimal_seconds")
  if chip and optimal is not None:
    # Per device: the busier of the MXUs and HBM, at their peaks.
    roofline = max(
        flops / chip.peak_bf16_flops,
        r["cost"].get("bytes accessed", 0.0) / chip.hbm_bytes_per_s,
    )
    seconds, uncosted = aot_tpu.cost_model_seconds(optimal, roofline)
    r.update(
        roofline_s=roofline,
        step_time_s=seconds,
        uncosted_ops=uncosted,
        mfu=model_flops / (seconds * len(devices) * chip.peak_bf16_flops),
    )
  return r


def format_report(r: dict) -> str:
  g = 1e9
  lines = [
      f"{r['config']} on {r['topology']}: {r['devices']} x {r['device_kind']}"
      f", mesh {r['mesh']} ({r['preset']}), batch {r['batch_size']} "
      f"({r['per_device_batch']:g} per device), {r['dtype']}, "
      f"jax {r['jax']}",
  ]
  if not r["fits"]:
    lines.append(f"DOES NOT FIT: {r['error']}")
    return "\n".join(lines)
  m = r["memory"]
  hbm = (
      f" of {r['hbm_bytes'] / GiB:.1f} GiB HBM ({r['hbm_used']:.0%})"
      + (" TIGHT" if r["hbm_used"] > TIGHT else "")
      if "hbm_bytes" in r
      else ""
  )
  lines.append(
      f"train state {r['state_bytes'] / GiB:.2f} GiB in all (params, EMA, "
      f"optimizer), frozen networks {r['frozen_bytes'] / GiB:.2f} GiB"
  )
  lines.append(
      f"memory per device: peak {m['peak'] / GiB:.2f} GiB{hbm}; arguments "
      f"{m['argument'] / GiB:.2f}, outputs {m['output'] / GiB:.2f} (donated "
      f"{m['alias'] / GiB:.2f}), temporaries {m['temp'] / GiB:.2f}"
  )
  lines.append(
      f"compile {r['compile_s']:.1f} s (lower {r['lower_s']:.1f} s)"
      + (
          f"; depth 1 and 2 unrolled for the cost model: "
          f"{r['unrolled']['compile_s']:.1f} s"
          if "unrolled" in r
          else ""
      )
  )
  if "xla_flops" in r:
    lines.append(
        f"model {r['model_flops'] / g / 1e3:.2f} TFLOP/step, XLA "
        f"{r['xla_flops'] / g / 1e3:.2f} TFLOP/step "
        f"(x{r['xla_over_model']:.2f})"
    )
  if "step_time_s" in r:
    uncosted = (
        f"; {r['uncosted_ops']} ops it could not cost left out"
        if r["uncosted_ops"]
        else ""
    )
    lines.append(
        f"XLA's cost model: {r['step_time_s'] * 1e3:.1f} ms/step "
        f"({1 / r['step_time_s']:.2f} steps/s, MFU {r['mfu']:.0%}){uncosted};"
        f" roofline {r['roofline_s'] * 1e3:.1f} ms (estimates, not "
        "measurements)"
    )
  if "collectives" in r:
    traffic = [
        f"{k} {v['count']} x, {v['bytes'] / 2**20:.0f} MiB"
        for k, v in r["collectives"].items()
        if v["count"]
    ]
    lines.append(
        "collectives per device per step: "
        + ("; ".join(traffic) if traffic else "none")
    )
  return "\n".join(lines)
