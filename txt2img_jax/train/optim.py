"""Optimiser, per-group learning rates and learning-rate schedules.

The trainable parameters are a dict whose top-level keys are parameter groups
('text_encoder', 'text_head', 'image_encoder', 'flow'). Each group gets its own
AdamW with its own schedule (the note: text side <= 2e-4, flow net <= 1e-4),
all behind one global-norm clip, via `optax.multi_transform`.

Config (`config.optim`)::

    optim.b1, optim.b2, optim.eps = 0.9, 0.95, 1e-8
    optim.weight_decay = 0.01
    optim.grad_clip = 1.0            # global norm over all trainable groups; 0/None: off
    optim.schedule = ConfigDict(dict(kind='sgdr', warmup_steps=0, t0=20_000, t_mult=1,
                                     eta_min=2.5e-7, max_lr=None, step_offset=0))
    optim.groups = ConfigDict(dict(
        text_head=dict(lr=2e-4, max_lr=2e-4),
        flow=dict(lr=1e-4, schedule=dict(eta_min=1e-7)),   # overrides of the shared schedule
        text_encoder=dict(lr=0.0, trainable=False),        # optax.set_to_zero
    ))

Schedules are plain `optax.Schedule`s evaluated at the train state's step,
which `tx.update(grads, opt_state, params, step=step)` receives; so
`current_lrs(schedules, step)` is exactly the learning rate of the update made
at `step`, whatever the optimiser's own counters say.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from txt2img_jax.train.schedules import FLOOR_FIELD
from txt2img_jax.train.schedules import make_schedule
from txt2img_jax.train.schedules import validated_fields

_GROUP_FIELDS = frozenset(
    {"lr", "max_lr", "schedule", "trainable", "weight_decay"}
)


def _plain(cfg: Any) -> dict[str, Any]:
  """A ConfigDict, mapping or None as a plain dict (a copy)."""
  if cfg is None:
    return {}
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_dict()
  return copy.deepcopy(dict(cfg))


def _optim_dict(config: Any) -> dict[str, Any]:
  """`config.optim` (or an optim block itself) as one plain dict: each
  function here reads the config once, through this, and works on dicts."""
  return _plain(config.optim if "optim" in config else config)


# ------------------------------------------------------------ groups and masks


def _key_name(k) -> str:
  """'name' of a DictKey / GetAttrKey / SequenceKey path entry."""
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def param_group_labels(params: Any) -> Any:
  """Pytree of str like `params`: each leaf's label is its top-level key."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _key_name(p[0]), params)


def decay_mask(params: Any) -> Any:
  """Pytree of bool like `params`: True where weight decay applies.

  No decay on anything with ndim <= 1 (biases, norm scales, scalars), on leaves
  named 'bias' or 'logit_scale', nor on a 'scale' inside a module whose name
  contains 'norm'.
  """

  def decays(path, x):
    names = [_key_name(k) for k in path]
    leaf = names[-1] if names else ""
    if jnp.ndim(x) <= 1 or leaf in ("bias", "logit_scale"):
      return False
    if leaf == "scale" and any("norm" in n.lower() for n in names[:-1]):
      return False
    return True

  return jax.tree_util.tree_map_with_path(decays, params)


def group_global_norms(tree: Any, labels: Any) -> dict[str, jax.Array]:
  """Global L2 norm of `tree`'s leaves per group label (labels: like `tree`)."""
  leaves = jax.tree_util.tree_leaves(tree)
  label_leaves = jax.tree_util.tree_leaves(labels)
  if len(leaves) != len(label_leaves):
    raise ValueError(
        f"tree has {len(leaves)} leaves but labels has {len(label_leaves)}."
    )
  sq: dict[str, jax.Array] = {}
  for x, g in zip(leaves, label_leaves):
    s = jnp.sum(jnp.square(jnp.asarray(x, jnp.float32)))
    sq[g] = sq[g] + s if g in sq else s
  return {g: jnp.sqrt(s) for g, s in sq.items()}


# ------------------------------------------------------------------ optimiser


def _group_cfgs(optim: dict[str, Any]) -> dict[str, dict[str, Any]]:
  groups = optim.get("groups") or {}
  for name, g in groups.items():
    unknown = set(g) - _GROUP_FIELDS
    if unknown:
      raise ValueError(
          f"Unknown field(s) {sorted(unknown)} in optim.groups.{name}."
      )
    if g.get("trainable", True) and g.get("lr") is None:
      raise ValueError(f"optim.groups.{name} needs an lr.")
  return groups


def _group_schedule_cfg(
    optim: dict[str, Any], group: Mapping[str, Any]
) -> dict[str, Any]:
  """The shared schedule with the group's overrides and its max_lr cap applied."""
  cfg = _plain(optim.get("schedule"))
  cfg.update(_plain(group.get("schedule")))
  caps = [c for c in (cfg.get("max_lr"), group.get("max_lr")) if c is not None]
  cfg["max_lr"] = min(caps) if caps else None
  return cfg


def unfinished_schedule(config: Any, threshold: float = 0.1) -> str | None:
  """A warning when the run stops before its learning rate has decayed.

  A recipe's schedules are sized for its own total_steps (restart.py: one
  SGDR cycle that ends on its last step); shortening the run with
  `--config.total_steps=N` alone leaves the LR near its peak on the last
  step. Returns None when every trainable group's LR on the last step is at
  most `threshold` of the way from its floor (eta_min, end_lr) to its peak
  (or its schedule is constant), else one line
  that says by how much and what scales the schedules with the steps.
  """
  optim = _optim_dict(config)
  last = config.total_steps - 1
  warmup = int((optim.get("schedule") or {}).get("warmup_steps", 0) or 0)
  if warmup >= config.total_steps > 1:
    return (
        f"the run ends inside the LR warmup (warmup_steps={warmup}, "
        f"total_steps={config.total_steps}). A recipe's steps variant "
        "scales every schedule with the steps (e.g. --config="
        f"configs/restart.py:{config.total_steps})."
    )
  worst = 0.0
  for group in _group_cfgs(optim).values():
    if not group.get("trainable", True) or not group["lr"]:
      continue
    cfg = _group_schedule_cfg(optim, group)
    cfg["max_lr"] = None  # The curve's own shape, not its cap.
    if cfg.get("kind", "constant") == "constant":
      continue
    peak = float(group["lr"])
    floor = min(float(cfg.get(FLOOR_FIELD[cfg["kind"]], 0.0) or 0.0), peak)
    if peak > floor:
      lr = float(make_schedule(cfg, peak)(last))
      worst = max(worst, (lr - floor) / (peak - floor))
  if worst <= threshold:
    return None
  return (
      f"the learning rate is still {worst:.0%} of the way from its floor "
      f"to its peak on the last step (total_steps={config.total_steps}): "
      "the run ends before its LR schedule decays. A recipe's steps "
      "variant scales every schedule with the steps (e.g. --config="
      f"configs/restart.py:{config.total_steps}); or set the schedule's "
      "own steps (optim.schedule) too."
  )


def make_optimizer(
    config: Any, params: Any
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
  """Builds clip -> per-group AdamW from `config.optim` for the groups in `params`.

  Returns `(tx, schedules)`; `schedules` has one entry per trainable group
  present in `params`. Groups in the config but absent from `params` (a frozen
  text encoder kept outside the trainable params) are ignored; groups in
  `params` but missing from the config raise ValueError. A group with
  `trainable=False` gets `optax.set_to_zero()`. The global-norm clip
  (`grad_clip`) is computed over the trainable groups only.
  """
  optim = _optim_dict(config)
  groups = _group_cfgs(optim)
  present = list(params.keys())
  missing = [g for g in present if g not in groups]
  if missing:
    raise ValueError(
        f"Parameter group(s) {missing} have no entry in optim.groups "
        f"(configured: {sorted(groups)})."
    )

  transforms, schedules = {}, {}
  for name in present:
    g = groups[name]
    if not g.get("trainable", True):
      transforms[name] = optax.set_to_zero()
      continue
    schedule_cfg = _group_schedule_cfg(optim, g)
    schedules[name] = make_schedule(schedule_cfg, g["lr"])
    # AdamW as its parts, so the learning rate can follow the train state's
    # step rather than the optimiser's own update count (see scale_by_lr_at).
    transforms[name] = optax.chain(
        optax.scale_by_adam(
            b1=optim.get("b1", 0.9),
            b2=optim.get("b2", 0.999),
            eps=optim.get("eps", 1e-8),
        ),
        optax.add_decayed_weights(
            g.get("weight_decay", optim.get("weight_decay", 0.0)), decay_mask
        ),
        scale_by_lr_at(schedules[name]),
    )

  labels = param_group_labels(params)
  tx = optax.multi_transform(transforms, labels)
  clip = optim.get("grad_clip")
  if clip:
    trainable = jax.tree_util.tree_map(lambda l: l in schedules, labels)
    tx = optax.chain(
        optax.masked(optax.clip_by_global_norm(clip), trainable), tx
    )
  return tx, schedules


def scale_by_lr_at(
    schedule: optax.Schedule,
) -> optax.GradientTransformationExtraArgs:
  """Multiplies updates by -schedule(step), with `step` passed to `update`.

  The train step passes its own step (`tx.update(g, s, p, step=state.step)`),
  so the learning rate is a function of the step alone: a skipped non-finite
  step, a reset of the optimiser moments or a restart that starts a new
  step count cannot put it out of sync.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, step, **extra_args):
    del params, extra_args
    lr = schedule(step)
    return jax.tree_util.tree_map(lambda u: -lr * u, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def current_lrs(
    schedules: Mapping[str, optax.Schedule], step: Any
) -> dict[str, jax.Array]:
  """The learning rate each group's AdamW uses for the update made at `step`."""
  return {name: sched(step) for name, sched in schedules.items()}


def restart_schedules(
    config: Any,
    old_lrs: Mapping[str, float],
    restart_step: int,
    peak_factor: float,
    *,
    schedule: Mapping[str, Any] | None = None,
    warmup_steps: int = 0,
) -> ml_collections.ConfigDict:
  """Returns a copy of `config.optim` whose schedules start a new cycle.

  Restart from a checkpoint (the note: "take the current lr as eta_min and do
  one CosineWarmRestarts with lr = 2 x base"): the weights and optimiser moments
  are kept; only the learning-rate curve changes. For every trainable group g:

  - the new cycle starts at `restart_step` (`step_offset`), so with warmup 0
    the lr at restart_step is the new peak;
  - its peak is `peak_factor * groups[g].lr`, still capped by `max_lr`;
  - its floor (`eta_min` for 'sgdr', `end_lr` for 'warmup_cosine') is
    `old_lrs[g]`, the lr the old run had reached (clamped to the new capped
    peak), so the new curve never goes below where the old one stopped;
  - `schedule` (optional) replaces fields of the shared schedule first, e.g.
    `dict(kind='sgdr', t0=20_000, t_mult=1)` to restart a warmup_cosine run
    with warm restarts; a 'constant' schedule has no floor to set;
  - `warmup_steps` of the new cycle (default 0: jump straight to the peak).

  The overrides are written into each group's `schedule` so a shared schedule
  stays shared; `make_optimizer(new_optim, params)` builds the restarted
  optimiser, whose state has the same structure as the old one.
  """
  optim = _optim_dict(config)
  groups = _group_cfgs(optim)
  trainable = [n for n, g in groups.items() if g.get("trainable", True)]
  unknown = set(old_lrs) - set(groups)
  if unknown:
    raise ValueError(
        f"old_lrs has group(s) {sorted(unknown)} not in optim.groups."
    )
  missing = [n for n in trainable if n not in old_lrs]
  if missing:
    raise ValueError(f"old_lrs is missing trainable group(s) {missing}.")
  if int(restart_step) != restart_step or restart_step < 0:
    raise ValueError(
        f"restart_step must be an integer >= 0, got {restart_step!r}."
    )
  if peak_factor <= 0:
    raise ValueError(f"peak_factor must be > 0, got {peak_factor}.")

  new = copy.deepcopy(optim)
  new["schedule"] = {**_plain(new.get("schedule")), **_plain(schedule)}
  for name in trainable:
    g = new["groups"][name]
    g["lr"] = float(peak_factor * g["lr"])
    overrides = _plain(g.get("schedule"))
    overrides.update(
        step_offset=int(restart_step), warmup_steps=int(warmup_steps)
    )
    sched = _group_schedule_cfg(new, {**g, "schedule": overrides})
    floor_field = FLOOR_FIELD.get(sched.get("kind"))
    if floor_field is not None:
      top = (
          g["lr"] if sched["max_lr"] is None else min(g["lr"], sched["max_lr"])
      )
      overrides[floor_field] = float(min(float(old_lrs[name]), top))
    g["schedule"] = overrides
    # Validate now so a bad restart fails before any training step.
    restarted = _group_schedule_cfg(new, g)
    validated_fields(restarted, g["lr"])
  return ml_collections.ConfigDict(new)


def new_cycle(config: Any, old_config: Any, old_step: int, params: Any, groups):
  """(tx, schedules, old_lrs) for weights taken from another run
  (`config.init_from`): each of the trainable `groups`' new cycle peaks at
  restart.peak_factor x its configured lr and ends at the lr the old run
  (`old_config`) had reached at `old_step` (`restart_schedules`)."""
  _, old_schedules = make_optimizer(old_config, params)
  old_lrs = {
      g: float(s(old_step)) for g, s in old_schedules.items() if g in groups
  }
  new_config = config.copy_and_resolve_references()
  with new_config.unlocked():
    new_config.optim = restart_schedules(
        config, old_lrs, restart_step=0, peak_factor=config.restart.peak_factor
    )
  tx, schedules = make_optimizer(new_config, params)
  return tx, schedules, old_lrs
