"""Learning-rate schedules: warmup + cosine decay, and SGDR (cosine warm
restarts, PyTorch's CosineAnnealingWarmRestarts), each an `optax.Schedule`
of the train state's step, from a config block (`config.optim.schedule`,
with a group's overrides)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Fields each schedule kind reads; `max_lr` and `step_offset` are common to all.


# Fields each schedule kind reads; `max_lr` and `step_offset` are common to all.
_COMMON_FIELDS = ("kind", "max_lr", "step_offset", "warmup_steps")


_KIND_FIELDS = {
    "constant": (),
    "warmup_cosine": ("decay_steps", "end_lr"),
    "sgdr": ("t0", "t_mult", "eta_min"),
}


_ALL_FIELDS = frozenset(_COMMON_FIELDS).union(*_KIND_FIELDS.values())
# The field holding the floor a restarted cycle decays to.


FLOOR_FIELD = {"warmup_cosine": "end_lr", "sgdr": "eta_min"}


def to_dict(cfg: Any) -> dict[str, Any]:
  if cfg is None:
    return {}
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_dict()
  return dict(cfg)


def validated_fields(cfg: Any, peak_lr: float) -> dict[str, Any]:
  """Returns the schedule's fields with defaults filled in; raises ValueError."""
  fields = to_dict(cfg)
  kind = fields.get("kind")
  if kind not in _KIND_FIELDS:
    raise ValueError(
        f"Unknown schedule kind {kind!r}; expected one of {sorted(_KIND_FIELDS)}."
    )
  unknown = set(fields) - _ALL_FIELDS
  if unknown:
    raise ValueError(
        f"Unknown schedule field(s) {sorted(unknown)} for kind {kind!r}."
    )
  f = dict(warmup_steps=0, max_lr=None, step_offset=0)
  f.update(fields)
  if peak_lr is None or peak_lr < 0:
    raise ValueError(f"peak_lr must be >= 0, got {peak_lr}.")
  for name in ("warmup_steps", "step_offset"):
    if f[name] is None or int(f[name]) != f[name] or f[name] < 0:
      raise ValueError(f"{name} must be an integer >= 0, got {f[name]!r}.")
  if f["max_lr"] is not None and f["max_lr"] <= 0:
    raise ValueError(f'max_lr must be > 0 or None, got {f["max_lr"]}.')
  # The highest lr the curve reaches; a floor above it makes no sense.
  top = peak_lr if f["max_lr"] is None else min(peak_lr, f["max_lr"])

  if kind == "warmup_cosine":
    if "decay_steps" not in f:
      raise ValueError(
          "warmup_cosine needs decay_steps (total, warmup included)."
      )
    if (
        int(f["decay_steps"]) != f["decay_steps"]
        or f["decay_steps"] <= f["warmup_steps"]
    ):
      raise ValueError(
          f'decay_steps ({f["decay_steps"]}) must be an integer > warmup_steps '
          f'({f["warmup_steps"]}).'
      )
    f.setdefault("end_lr", 0.0)
    if not 0 <= f["end_lr"] <= top:
      raise ValueError(f'end_lr ({f["end_lr"]}) must lie in [0, peak={top}].')
  elif kind == "sgdr":
    for name in ("t0", "t_mult"):
      if name not in f:
        raise ValueError(f"sgdr needs {name}.")
    if int(f["t0"]) != f["t0"] or f["t0"] < 1:
      raise ValueError(f't0 must be an integer >= 1, got {f["t0"]!r}.')
    if int(f["t_mult"]) != f["t_mult"] or f["t_mult"] < 1:
      raise ValueError(f't_mult must be an integer >= 1, got {f["t_mult"]!r}.')
    f.setdefault("eta_min", 0.0)
    if not 0 <= f["eta_min"] <= top:
      raise ValueError(f'eta_min ({f["eta_min"]}) must lie in [0, peak={top}].')
  return f


def _sgdr_cycle(
    u: jax.Array, t0: int, t_mult: int
) -> tuple[jax.Array, jax.Array]:
  """(T_cur, T_i) of CosineAnnealingWarmRestarts at epoch `u` (int32, >= 0)."""
  if t_mult == 1:
    return u % t0, jnp.full_like(u, t0)

  def start(n):  # first epoch of cycle n: t0 * (t_mult^n - 1) / (t_mult - 1)
    return t0 * (t_mult**n - 1) // (t_mult - 1)

  uf = u.astype(jnp.float32)
  n = jnp.floor(jnp.log(uf / t0 * (t_mult - 1) + 1) / math.log(t_mult)).astype(
      jnp.int32
  )
  n = jnp.maximum(n, 0)
  # The float log can land one cycle off at a boundary; fix it in integers.
  n = jnp.where(u >= start(n + 1), n + 1, n)
  n = jnp.where(u < start(n), n - 1, n)
  return u - start(n), t0 * t_mult**n


def make_schedule(cfg: Any, peak_lr: float) -> optax.Schedule:
  """Builds a learning-rate schedule (step -> lr) from a schedule ConfigDict.

  Fields: `kind` in {'constant', 'warmup_cosine', 'sgdr'}; for all kinds
  `warmup_steps` (linear 0 -> peak, default 0), `max_lr` (cap, None = none) and
  `step_offset` (the curve is evaluated at step - step_offset, and at 0 before
  it); 'warmup_cosine': `decay_steps` (total, warmup included), `end_lr`
  (absolute floor, held after decay_steps); 'sgdr': `t0`, `t_mult` (int >= 1),
  `eta_min` (absolute) -- after warmup the curve equals PyTorch's
  CosineAnnealingWarmRestarts(T_0=t0, T_mult=t_mult, eta_min=eta_min) with base
  lr = peak_lr.
  """
  f = validated_fields(cfg, peak_lr)
  kind, warmup, offset, max_lr = (
      f["kind"],
      int(f["warmup_steps"]),
      int(f["step_offset"]),
      f["max_lr"],
  )
  peak = float(peak_lr)

  def schedule(step):
    s = jnp.maximum(jnp.asarray(step, jnp.int32) - offset, 0)
    if kind == "constant":
      lr = jnp.full(s.shape, peak, jnp.float32)
    elif kind == "warmup_cosine":
      frac = jnp.clip((s - warmup) / (int(f["decay_steps"]) - warmup), 0.0, 1.0)
      end = float(f["end_lr"])
      lr = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    else:  # sgdr
      t_cur, t_i = _sgdr_cycle(
          jnp.maximum(s - warmup, 0), int(f["t0"]), int(f["t_mult"])
      )
      eta_min = float(f["eta_min"])
      lr = eta_min + (peak - eta_min) * 0.5 * (
          1 + jnp.cos(jnp.pi * t_cur / t_i)
      )
    if warmup > 0:
      lr = jnp.where(s < warmup, peak * s / warmup, lr)
    if max_lr is not None:
      lr = jnp.minimum(lr, max_lr)
    return lr.astype(jnp.float32)

  return schedule
