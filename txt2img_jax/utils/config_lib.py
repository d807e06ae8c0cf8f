"""Config helpers: loading a sibling recipe, reading a recipe's variants,
and scaling a recipe's step-based schedules with its number of steps."""

from __future__ import annotations

import importlib.util
import os


def load_sibling(config_file: str, name: str):
  """Imports configs/<name>.py next to `config_file` (recipes build on base)."""
  path = os.path.join(
      os.path.dirname(os.path.abspath(config_file)), f"{name}.py"
  )
  spec = importlib.util.spec_from_file_location(f"_txt2img_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def variant_parts(
    variant: str, known: tuple[str, ...], steps: bool = False
) -> list[str]:
  """The comma-separated parts of a recipe's variant ("800,tiny"); one line
  naming the known ones for any other (with steps=True a number of steps is
  known too)."""
  parts = [v for v in variant.split(",") if v]
  unknown = [p for p in parts if p not in known and not (steps and p.isdigit())]
  if unknown:
    listed = ", ".join(repr(k) for k in known)
    if steps:
      listed += ", a number of steps such as '800'"
    raise ValueError(
        f"unknown config variant {sorted(unknown)[0]!r}; known: {listed} "
        "(comma-separated)"
    )
  return parts


def rescale_steps(c, steps: int) -> None:
  """Sets total_steps and scales the recipe's step-based schedules with it
  (warmup, the SGDR cycle or cosine decay, the time-sampling curriculum), so
  that a shorter or longer run still ends its cycle on its last step."""
  if steps == c.total_steps:
    return
  scale = steps / c.total_steps
  sched = c.optim.schedule
  sched.warmup_steps = max(1, round(sched.warmup_steps * scale))
  if "t0" in sched:
    sched.t0 = steps - sched.warmup_steps
  if "decay_steps" in sched:
    sched.decay_steps = max(1, round(sched.decay_steps * scale))
  sampler = c.time.sampler
  if sampler.kind == "curriculum":
    sampler.steps = round(sampler.steps * scale)
    if sampler.blend_steps:
      sampler.blend_steps = max(1, round(sampler.blend_steps * scale))
  c.total_steps = steps


def steps_variant(c, steps: int) -> None:
  """A recipe's variant "N" (`configs/restart.py:400`): N steps, every
  schedule scaled with them (`rescale_steps`), a benchmark at the end, grids
  at half-way and the end, a checkpoint every quarter."""
  if steps < 1:
    raise ValueError(
        f"config variant {steps!r}: a number of steps must be " ">= 1"
    )
  rescale_steps(c, steps)
  c.eval_every = steps
  c.sample_every = max(1, steps // 2)
  c.checkpoint_every = max(1, steps // 4)
