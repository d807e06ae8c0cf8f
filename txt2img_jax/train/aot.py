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
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import latents
from txt2img_jax.train import assets, sharding, validate
from txt2img_jax.train import flops as flops_lib
from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import step as step_lib

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Nominal figures per chip, from the Cloud TPU system-architecture pages:
  HBM capacity, peak dense bf16 FLOP/s, HBM bandwidth. The usable HBM is a
  little less (the runtime keeps some), which is why peaks above 90% are
  called tight."""

  name: str
  hbm_bytes: int
  peak_bf16_flops: float
  hbm_bytes_per_s: float


# jax's device_kind -> the chip.
CHIPS = {
    "TPU v4": Chip("v4", 32 * GiB, 275e12, 1228e9),
    "TPU v5 lite": Chip("v5e", 16 * GiB, 197e12, 819e9),
    "TPU v5": Chip("v5p", 95 * GiB, 459e12, 2765e9),
    "TPU v6 lite": Chip("v6e", 32 * GiB, 918e12, 1640e9),
}
TIGHT = 0.9
COLLECTIVES = (
    "all-gather",
    "reduce-scatter",
    "all-reduce",
    "all-to-all",
    "collective-permute",
)


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The compile-only devices of a TPU topology, e.g. "v5e:2x2"."""
  try:
    from jax.experimental import topologies

    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    desc = topologies.get_topology_desc(
        topology_name=topology, platform="tpu", **kwargs
    )
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    raise ValueError(
        f"--topology={topology!r}: jax cannot describe it ({first}). It needs"
        " libtpu: a venv with `pip install -e '.[tpu]'` (docs/install.md);"
        " names look like v5e:2x2, v5e:8x8, v5p:2x2x2, v6e:4x4"
    ) from None
  return list(desc.devices)


def chip_of(device) -> Chip | None:
  return CHIPS.get(device.device_kind)


# --- The parts of a run, from shapes alone -----------------------------------


def abstract_text(config, vocab_size: int) -> assets.TextSide:
  """The text side without weights or tokenizer files: a frozen encoder from
  its config.json; an embedded one with `vocab_size` words (the shapes
  vocabulary's size for shapes runs)."""
  from txt2img_jax.models import text_encoder as text_encoder_lib

  name = config.text_encoder.name
  if not name:
    if config.data.name == "shapes":
      vocab_size = len(assets.vocabulary(config, None))
    return assets.TextSide(
        None, vocab_size, config.text_encoder.width, None, {}
    )
  enc = text_encoder_lib.describe_pretrained_text_encoder(
      name, dtype=np.dtype(config.dtype)
  )
  # The vocabulary size only sizes an embedded encoder's table.
  return assets.TextSide(None, vocab_size, enc.width, enc, enc.params)


def abstract_parts(config, devices: int, vocab_size: int) -> run_lib.Parts:
  validate.use_prng_impl(config)
  latent_shape = validate.validate_config(config, devices=devices)
  text = abstract_text(config, vocab_size)
  autoencoder = latents.describe(config)
  model = run_lib.build_model(
      config, latent_shape, text.vocab_size, text.frozen is None
  )
  return run_lib.Parts(config, latent_shape, text, autoencoder, model)


def batch_shapes(config, parts: run_lib.Parts) -> dict[str, tuple]:
  """name -> (shape, dtype) of one global batch, as the input pipeline
  hands it to the step (data/pipeline.py; tests/test_aot.py checks the two
  agree on a shapes run)."""
  b, s, length = config.batch_size, config.data.image_size, config.data.max_len
  out = {
      "image": ((b, s, s, 3), np.float32),
      "ids": ((b, length), np.int32),
      "mask": ((b, length), np.int32),
  }
  if config.loss.hard_negatives:
    out["neg_ids"] = out["neg_mask"] = ((b, length), np.int32)
  if config.autoencoder.kind == "kl_vae" and config.data.cache_latents:
    moments = ((b,) + tuple(parts.latent_shape), np.float32)
    out["moments_mean"] = out["moments_logvar"] = moments
  if parts.text.frozen is not None and config.data.cache_text:
    out["text_tokens"] = (
        (b, length, parts.text.width),
        np.dtype(config.data.text_cache_dtype),
    )
  return out


def _shaped(tree, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      tree,
      shardings,
  )


def _abstract(tree, sharding_):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(
          np.shape(a), jnp.result_type(a), sharding=sharding_
      ),
      tree,
  )


# --- Compile and read the compiled program -----------------------------------


def lower_train_step(config, devices, vocab_size: int = 32000):
  """(lowered step, parts, mesh, {"state", "frozen": bytes}): the train step
  of `config` over `devices`."""
  parts = abstract_parts(config, len(devices), vocab_size)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model, devices)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  tx, schedules, _, _, abstract_state, state_shardings = (
      state_lib.train_state_spec(
          config,
          parts.model,
          parts.latent_shape,
          parts.text.width,
          mesh,
          rules,
      )
  )
  # No XLA options: config.xla_cpu_options are for a CPU backend.
  step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules),
      state_shardings,
      mesh,
      rules=rules,
  )
  repl = sharding.replicated(mesh)
  batch = {
      k: jax.ShapeDtypeStruct(
          shape, dtype, sharding=sharding.batch_sharding(mesh)
      )
      for k, (shape, dtype) in batch_shapes(config, parts).items()
  }
  c = parts.latent_shape[-1]
  stats = ae_lib.LatentStats(
      shift=jax.ShapeDtypeStruct((c,), jnp.float32, sharding=repl),
      scale=jax.ShapeDtypeStruct((c,), jnp.float32, sharding=repl),
  )
  frozen = _abstract(parts.frozen, repl)
  with mesh:
    lowered = step.lower(
        _shaped(abstract_state, state_shardings), batch, frozen, stats
    )
  sizes = {"state": nbytes(abstract_state), "frozen": nbytes(frozen)}
  return lowered, parts, mesh, sizes


def nbytes(tree) -> int:
  """Bytes of a pytree of arrays or shapes, whole (not per device)."""
  return sum(
      math.prod(a.shape) * jnp.dtype(a.dtype).itemsize
      for a in jax.tree.leaves(tree)
  )


def out_of_memory(error: Exception) -> str | None:
  """XLA's one line on a program that does not fit, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
    return None
  for line in text.splitlines():
    if "memory" in line.lower():
      return line.strip()
  return text.strip().splitlines()[0]


_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    bits = _BITS.get(dtype) or int(re.sub(r"\D", "", dtype[:4]) or 8)
    n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    total += n * bits // 8
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """kind -> {"count", "bytes"}: each collective in the compiled HLO, by the
  size of what it produces per device (async pairs counted at their -done).
  Static occurrences: a collective inside a loop body is counted once."""
  out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
  op = re.compile(
      r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start|-done)?\("
  )
  for line in hlo_text.splitlines():
    m = op.search(line)
    if not m or m.group(3) == "-start":
      continue
    kind = out[m.group(2)]
    kind["count"] += 1
    kind["bytes"] += _shape_bytes(m.group(1))
  return out


def cost_model_seconds(optimal_seconds: float, roofline_s: float):
  """(seconds of the ops XLA's cost model costs, how many it left uncosted).

  libtpu's `optimal_seconds` adds -1 for each op it cannot cost (seen with
  some sharded dot_generals and the rbg random-bit generator): the total is
  (costed seconds) - (uncosted ops). Read here as the fewest uncosted ops
  that bring the costed part up to the roofline bound, which those ops take
  at least: exact while the costed part is within a second of the bound.
  """
  uncosted = max(0, math.ceil(roofline_s - optimal_seconds - 1e-9))
  return optimal_seconds + uncosted, uncosted


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


def compile_step(config, devices, vocab_size: int = 32000) -> dict:
  """Compiles `config`'s train step for `devices`; the figures, or
  {"fits": False, "error": ...} when XLA finds it does not fit."""
  t0 = time.perf_counter()
  lowered, parts, mesh, sizes = lower_train_step(config, devices, vocab_size)
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
    why = out_of_memory(e)
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
  chip = chip_of(devices[0])
  if chip:
    r["hbm_bytes"] = chip.hbm_bytes
    r["hbm_used"] = mem["peak"] / chip.hbm_bytes
  r["fits"] = True
  r["cost"] = _cost(compiled)
  r["collectives"] = collectives(compiled.as_text())
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
      for kind in COLLECTIVES
  }
  out.update(fits=True, cost=cost, collectives=traffic)
  return out


def report(config, devices, topology: str, vocab_size: int = 32000) -> dict:
  """Everything the command prints: memory of the program training runs,
  cost and traffic of its unrolled twin when the DiT is scanned."""
  d = devices[0]
  chip = chip_of(d)
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
    seconds, uncosted = cost_model_seconds(optimal, roofline)
    r.update(
        roofline_s=roofline,
        step_time_s=seconds,
        uncosted_ops=uncosted,
        mfu=model_flops / (seconds * len(devices) * chip.peak_bf16_flops),
    )
  return r


def largest_true(
    fits, limit: int, start: int = 1
) -> tuple[int, int | None]:
  """(largest n <= limit found with fits(n), smallest n found failing or
  None), for a `fits` that is true up to some n and false above: doubling
  from `start` while it fits (halving while it does not), then bisecting
  the gap to within 1/8 of the answer."""
  good, bad, n = 0, None, max(1, min(start, limit))
  if fits(n):
    good = n
    while n * 2 <= limit:
      n *= 2
      if not fits(n):
        bad = n
        break
      good = n
  else:
    bad = n
    while n > 1:
      n //= 2
      if fits(n):
        good = n
        break
      bad = n
  if bad is not None and good:
    while bad - good > max(1, good // 8):
      mid = (good + bad) // 2
      if fits(mid):
        good = mid
      else:
        bad = mid
  return good, bad


def find_max_batch(
    config, devices, vocab_size: int = 32000, limit: int = 4096
) -> dict:
  """The largest per-device batch whose step compiles within HBM, searched
  from the config's own (`largest_true`). Each try is one compile of the
  program training runs."""
  data = sharding.make_mesh(config.mesh.data, config.mesh.model, devices)
  rows = data.shape["data"]
  tries = []

  def fits(per_device: int) -> bool:
    c = copy.deepcopy(config)
    c.batch_size = per_device * rows
    r = compile_step(c, devices, vocab_size)
    tries.append(
        {
            "per_device_batch": per_device,
            "fits": r["fits"],
            "peak": r.get("memory", {}).get("peak"),
            "error": r.get("error"),
        }
    )
    return r["fits"]

  start = max(1, config.batch_size // rows)
  good, bad = largest_true(fits, limit, start)
  return {
      "max_per_device_batch": good,
      "max_batch_size": good * rows,
      "first_failing": bad,
      "tries": tries,
  }


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
