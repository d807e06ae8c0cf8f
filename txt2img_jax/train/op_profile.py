"""Where a compiled train step's time goes: its HLO instructions classed by
kind (matmul, convolution, data movement, ...) and by the model part they
belong to, timed from a profile of a few steps (`perf --profile`)."""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

import jax

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
