"""Schedules against their formulas, per-group AdamW against hand-computed Adam steps."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from txt2img_jax.train import optim


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def _curve(schedule, n):
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n)))


def _torch_sgdr_reference(base_lr, t0, t_mult, eta_min, n):
  """PyTorch CosineAnnealingWarmRestarts' recursive step(), in plain Python."""
  lrs, t_cur, t_i = [], 0, t0
  for _ in range(n):
    lrs.append(
        eta_min
        + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    )
    t_cur += 1
    if t_cur >= t_i:
      t_cur -= t_i
      t_i *= t_mult
  return np.array(lrs)


# ------------------------------------------------------------------ schedules


def test_constant_with_warmup():
  lr = _curve(
      optim.make_schedule(_cfg(kind="constant", warmup_steps=4), 1e-3), 10
  )
  np.testing.assert_allclose(
      lr, [0, 2.5e-4, 5e-4, 7.5e-4] + [1e-3] * 6, rtol=1e-6
  )


def test_warmup_cosine_matches_closed_form():
  peak, end, warm, total = 3e-4, 1e-5, 50, 400
  lr = _curve(
      optim.make_schedule(
          _cfg(
              kind="warmup_cosine",
              warmup_steps=warm,
              decay_steps=total,
              end_lr=end,
          ),
          peak,
      ),
      500,
  )
  s = np.arange(500)
  frac = np.clip((s - warm) / (total - warm), 0, 1)
  want = np.where(
      s < warm,
      peak * s / warm,
      end + (peak - end) * 0.5 * (1 + np.cos(np.pi * frac)),
  )
  np.testing.assert_allclose(lr, want, rtol=1e-5, atol=1e-12)
  assert lr[warm] == pytest.approx(peak) and lr[-1] == pytest.approx(end)


@pytest.mark.parametrize("t0,t_mult", [(20, 1), (7, 1), (10, 2), (3, 3)])
def test_sgdr_matches_pytorch_recursion(t0, t_mult):
  peak, eta_min, n = 5e-6, 2.5e-7, 700
  lr = _curve(
      optim.make_schedule(
          _cfg(kind="sgdr", t0=t0, t_mult=t_mult, eta_min=eta_min), peak
      ),
      n,
  )
  np.testing.assert_allclose(
      lr, _torch_sgdr_reference(peak, t0, t_mult, eta_min, n), rtol=1e-5
  )


def test_sgdr_after_warmup_is_shifted_reference():
  peak, warm = 1e-4, 25
  lr = _curve(
      optim.make_schedule(
          _cfg(kind="sgdr", warmup_steps=warm, t0=30, t_mult=2, eta_min=0.0),
          peak,
      ),
      400,
  )
  np.testing.assert_allclose(
      lr[:warm], peak * np.arange(warm) / warm, rtol=1e-6
  )
  np.testing.assert_allclose(
      lr[warm:],
      _torch_sgdr_reference(peak, 30, 2, 0.0, 400 - warm),
      rtol=1e-5,
      atol=peak * 1e-6,
  )


def test_sgdr_large_steps_stay_exact():
  # Far into training, closed-form cycle boundaries must not drift.
  sched = optim.make_schedule(
      _cfg(kind="sgdr", t0=20_000, t_mult=2, eta_min=0.0), 1.0
  )
  boundaries = [20_000 * (2**k - 1) for k in range(1, 8)]
  for b in boundaries:
    assert float(sched(b)) == pytest.approx(1.0)
    assert float(sched(b - 1)) < 1e-6


def test_cap_and_step_offset():
  base = _cfg(kind="sgdr", t0=10, t_mult=1, eta_min=0.0)
  capped = _curve(
      optim.make_schedule(_cfg(**base.to_dict(), max_lr=0.5), 1.0), 30
  )
  plain = _curve(optim.make_schedule(base, 1.0), 30)
  np.testing.assert_allclose(capped, np.minimum(plain, 0.5), rtol=1e-6)
  shifted = _curve(
      optim.make_schedule(_cfg(**base.to_dict(), step_offset=7), 1.0), 30
  )
  np.testing.assert_allclose(shifted[7:], plain[:23], rtol=1e-6)
  np.testing.assert_allclose(
      shifted[:7], plain[0], rtol=1e-6
  )  # held at the start before it


@pytest.mark.parametrize(
    "cfg,peak",
    [
        (dict(kind="linear"), 1e-3),
        (dict(kind="constant", warmup_steps=-1), 1e-3),
        (dict(kind="constant", step_offset=-5), 1e-3),
        (dict(kind="constant", warmup_step=10), 1e-3),  # typo
        (dict(kind="constant"), -1e-3),
        (dict(kind="constant", max_lr=0.0), 1e-3),
        (dict(kind="sgdr", t0=10, t_mult=0, eta_min=0.0), 1e-3),
        (dict(kind="sgdr", t0=10, t_mult=1.5, eta_min=0.0), 1e-3),
        (dict(kind="sgdr", t0=0, t_mult=1, eta_min=0.0), 1e-3),
        (dict(kind="sgdr", t0=10, t_mult=1, eta_min=2e-3), 1e-3),
        (dict(kind="sgdr", t0=10, t_mult=1, eta_min=5e-4, max_lr=1e-4), 1e-3),
        (dict(kind="warmup_cosine", warmup_steps=10, decay_steps=10), 1e-3),
        (dict(kind="warmup_cosine", decay_steps=100, end_lr=1.0), 1e-3),
    ],
)
def test_schedule_validation(cfg, peak):
  with pytest.raises(ValueError):
    optim.make_schedule(_cfg(**cfg), peak)


# ------------------------------------------------------------------ optimiser

GROUP_LRS = dict(
    text_encoder=3e-4, text_head=2e-4, image_encoder=1.5e-4, flow=1e-4
)


def _params():
  ones = lambda *s: jnp.ones(s, jnp.float32)
  return {
      "text_encoder": {
          "Embed_0": {"embedding": ones(5, 4)},
          "LayerNorm_0": {"scale": ones(4), "bias": ones(4)},
      },
      "text_head": {"Dense_0": {"kernel": ones(4, 6), "bias": ones(6)}},
      "image_encoder": {
          "proj": {"kernel": ones(3, 2)},
          "logit_scale": jnp.asarray(2.0),
      },
      "flow": {
          "Conv_0": {"kernel": ones(3, 3, 2, 2), "bias": ones(2)},
          "norm1": {"scale": ones(2)},
      },
  }


def _config(**optim_overrides):
  optim_cfg = dict(
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,
      grad_clip=0.0,
      schedule=dict(kind="sgdr", warmup_steps=0, t0=5, t_mult=1, eta_min=1e-6),
      groups={g: dict(lr=lr) for g, lr in GROUP_LRS.items()},
  )
  optim_cfg.update(optim_overrides)
  return ml_collections.ConfigDict(dict(optim=optim_cfg))


def _grads(params, seed=0):
  """Non-zero gradients of mixed sign with |g| in [0.5, 1.5) >> eps."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(
          rng.choice([-1.0, 1.0], x.shape) * rng.uniform(0.5, 1.5, x.shape),
          jnp.float32,
      ),
      params,
  )


def _run(tx, params, grads, n):
  """Applies n updates with the same grads; returns the update (parameter change) of each."""
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for i in range(n):
    updates, state = update(grads, state, params, step=i)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
    history.append(updates)
  return history


def test_per_group_lrs_are_the_actual_adam_step():
  params = _params()
  tx, schedules = optim.make_optimizer(_config(), params)
  assert set(schedules) == set(GROUP_LRS)
  grads = _grads(params)
  history = jax.device_get(_run(tx, params, grads, 8))
  grads = jax.device_get(grads)
  lrs_at = jax.jit(
      lambda s: optim.current_lrs(schedules, s)
  )  # as the train step logs them
  for step, updates in enumerate(history):
    lrs = jax.device_get(lrs_at(step))
    for g in GROUP_LRS:
      # Constant gradients: bias-corrected m = g and v = g^2, so Adam moves by lr * g / (|g| + eps).
      want = jax.tree_util.tree_map(
          lambda x: -lrs[g] * x / (np.abs(x) + 1e-8), grads[g]
      )
      jax.tree_util.tree_map(
          lambda d, w: np.testing.assert_allclose(d, w, rtol=1e-5),
          updates[g],
          want,
      )
  # Step 0 is the configured peak, later steps follow the schedule (cycle of 5).
  for g, lr in GROUP_LRS.items():
    assert float(optim.current_lrs(schedules, 0)[g]) == pytest.approx(lr)
    assert float(optim.current_lrs(schedules, 5)[g]) == pytest.approx(lr)
    assert float(optim.current_lrs(schedules, 3)[g]) < lr


def test_current_lrs_inside_jit_and_group_overrides():
  cfg = _config()
  cfg.optim.groups.flow.max_lr = 5e-5
  cfg.optim.groups.text_head.schedule = dict(kind="constant")
  _, schedules = optim.make_optimizer(cfg, _params())
  lrs = jax.jit(lambda s: optim.current_lrs(schedules, s))(jnp.asarray(2))
  assert float(lrs["flow"]) == pytest.approx(5e-5)
  assert float(lrs["text_head"]) == pytest.approx(2e-4)


def test_non_trainable_group_is_zero_and_absent_group_is_fine():
  cfg = _config()
  cfg.optim.groups.text_encoder.trainable = False
  params = _params()
  del params["image_encoder"]  # configured but absent: ignored
  tx, schedules = optim.make_optimizer(cfg, params)
  assert set(schedules) == {"text_head", "flow"}
  updates, _ = tx.update(_grads(params), tx.init(params), params, step=0)
  for leaf in jax.tree_util.tree_leaves(updates["text_encoder"]):
    assert not np.any(np.asarray(leaf))
  assert np.all(np.asarray(updates["flow"]["Conv_0"]["kernel"]) != 0)


def test_group_missing_from_config_raises():
  cfg = _config()
  del cfg.optim.groups["flow"]
  with pytest.raises(ValueError, match="flow"):
    optim.make_optimizer(cfg, _params())


def test_decay_mask():
  mask = optim.decay_mask(_params())
  assert mask["text_encoder"]["Embed_0"]["embedding"]
  assert not mask["text_encoder"]["LayerNorm_0"]["scale"]
  assert not mask["text_encoder"]["LayerNorm_0"]["bias"]
  assert (
      mask["text_head"]["Dense_0"]["kernel"]
      and not mask["text_head"]["Dense_0"]["bias"]
  )
  assert not mask["image_encoder"]["logit_scale"]
  assert not mask["flow"]["norm1"]["scale"] and mask["flow"]["Conv_0"]["kernel"]
  # A 2-D 'scale' inside a norm module and a 2-D 'logit_scale' are still excluded by name.
  assert not optim.decay_mask(
      {"g": {"GroupNorm_0": {"scale": jnp.ones((2, 2))}}}
  )["g"]["GroupNorm_0"]["scale"]
  assert not optim.decay_mask({"g": {"logit_scale": jnp.ones((1, 1))}})["g"][
      "logit_scale"
  ]


def test_weight_decay_only_on_masked_leaves():
  wd = 0.1
  params = _params()
  tx, schedules = optim.make_optimizer(_config(weight_decay=wd), params)
  grads = _grads(params)
  updates, _ = tx.update(grads, tx.init(params), params, step=0)
  lr = GROUP_LRS["text_head"]
  g_k, g_b = (
      grads["text_head"]["Dense_0"]["kernel"],
      grads["text_head"]["Dense_0"]["bias"],
  )
  np.testing.assert_allclose(
      updates["text_head"]["Dense_0"]["kernel"],
      -lr * (g_k / (jnp.abs(g_k) + 1e-8) + wd * 1.0),
      rtol=1e-4,
  )
  np.testing.assert_allclose(
      updates["text_head"]["Dense_0"]["bias"],
      -lr * g_b / (jnp.abs(g_b) + 1e-8),
      rtol=1e-4,
  )


def test_grad_clip_uses_global_norm_over_trainable_groups():
  # A large eps makes Adam's first step depend on the gradient's scale
  # (lr * g / (|g| + eps)), so clipping becomes visible in the update.
  clip, eps = 0.5, 1.0

  def tx_for(grad_clip):
    cfg = _config(grad_clip=grad_clip, eps=eps)
    cfg.optim.groups.text_encoder.trainable = False
    return optim.make_optimizer(cfg, params)[0]

  params = _params()
  grads = _grads(params)
  # The frozen group's enormous gradient must not take part in the clip.
  grads["text_encoder"] = jax.tree_util.tree_map(
      lambda x: 1e6 * x, grads["text_encoder"]
  )
  norms = optim.group_global_norms(grads, optim.param_group_labels(params))
  trainable_norm = math.sqrt(
      sum(float(norms[g]) ** 2 for g in ("text_head", "image_encoder", "flow"))
  )
  assert trainable_norm > 4 * clip
  scaled = {
      g: jax.tree_util.tree_map(lambda x: x * clip / trainable_norm, v)
      for g, v in grads.items()
  }

  tx_clip, tx_ref = tx_for(clip), tx_for(0.0)
  u_clip, _ = tx_clip.update(grads, tx_clip.init(params), params, step=0)
  u_ref, _ = tx_ref.update(scaled, tx_ref.init(params), params, step=0)
  u_raw, _ = tx_ref.update(grads, tx_ref.init(params), params, step=0)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12),
      u_clip,
      u_ref,
  )
  assert not np.allclose(
      u_clip["flow"]["Conv_0"]["kernel"], u_raw["flow"]["Conv_0"]["kernel"]
  )


def test_group_global_norms():
  tree = {
      "a": {"x": jnp.full((2, 2), 3.0), "y": jnp.asarray(4.0)},
      "b": {"z": jnp.ones(9)},
  }
  norms = optim.group_global_norms(tree, optim.param_group_labels(tree))
  assert float(norms["a"]) == pytest.approx(math.sqrt(4 * 9 + 16))
  assert float(norms["b"]) == pytest.approx(3.0)


# ------------------------------------------------------------------ restart


def test_restart_schedules_new_cycle():
  cfg = _config()
  cfg.optim.schedule = dict(
      kind="warmup_cosine", warmup_steps=100, decay_steps=1000, end_lr=0.0
  )
  cfg.optim.groups.flow.max_lr = 1.5e-4
  cfg.optim.groups.text_encoder.trainable = False
  params = _params()
  _, old = optim.make_optimizer(cfg, params)
  restart_step = 800
  old_lrs = {
      g: float(v) for g, v in optim.current_lrs(old, restart_step).items()
  }

  new_optim = optim.restart_schedules(
      cfg,
      old_lrs,
      restart_step,
      peak_factor=2.0,
      schedule=dict(kind="sgdr", t0=200, t_mult=1),
  )
  assert cfg.optim.groups.flow.lr == 1e-4  # the input is not modified
  _, new = optim.make_optimizer(new_optim, params)
  assert set(new) == set(old_lrs)

  peaks = {
      g: min(2 * GROUP_LRS[g], 1.5e-4 if g == "flow" else np.inf)
      for g in old_lrs
  }
  for g, sched in new.items():
    lr = _curve(sched, restart_step + 401)
    assert lr[restart_step] == pytest.approx(
        peaks[g], rel=1e-5
    )  # starts at the (capped) peak
    # Decays to the old run's lr just before the next restart, then restarts.
    assert lr[restart_step + 199] == pytest.approx(
        old_lrs[g], rel=2e-3, abs=1e-10
    )
    assert lr[restart_step + 200] == pytest.approx(peaks[g], rel=1e-5)
    assert lr[restart_step:].min() >= old_lrs[g] * (1 - 1e-5)
    want = _torch_sgdr_reference(2 * GROUP_LRS[g], 200, 1, old_lrs[g], 401)
    np.testing.assert_allclose(
        lr[restart_step:], np.minimum(want, peaks[g]), rtol=1e-5
    )


def test_restart_schedules_keeps_warmup_cosine_and_validates():
  cfg = _config(
      schedule=dict(
          kind="warmup_cosine", warmup_steps=0, decay_steps=500, end_lr=0.0
      )
  )
  old_lrs = {g: 0.1 * lr for g, lr in GROUP_LRS.items()}
  new_optim = optim.restart_schedules(cfg.optim, old_lrs, 300, peak_factor=1.0)
  _, new = optim.make_optimizer(new_optim, _params())
  lr = _curve(new["flow"], 900)
  assert lr[300] == pytest.approx(GROUP_LRS["flow"])
  assert lr[800:].min() == pytest.approx(old_lrs["flow"])
  with pytest.raises(ValueError, match="missing"):
    optim.restart_schedules(cfg, {"flow": 1e-6}, 300, 2.0)
  with pytest.raises(ValueError):
    optim.restart_schedules(cfg, old_lrs, -1, 2.0)


def test_lr_follows_the_step_argument_not_the_update_count():
  # A skipped (non-finite) step or a restart must not shift the schedule:
  # the lr of an update is that of the step the train state passes in.
  params = _params()
  tx, schedules = optim.make_optimizer(_config(), params)
  grads = _grads(params)
  state = tx.init(params)
  u5, _ = tx.update(grads, state, params, step=5)
  lr5 = float(schedules["flow"](5))
  g = grads["flow"]["Conv_0"]["kernel"]
  np.testing.assert_allclose(
      u5["flow"]["Conv_0"]["kernel"], -lr5 * g / (jnp.abs(g) + 1e-8), rtol=1e-4
  )


def test_unfinished_schedule_warns_when_only_total_steps_is_shortened():
  from experiments import common

  for name, variant in (("restart", ""), ("restart", "400"), ("base", "")):
    # restart.py's cycle ends on its last step; base.py decays to its floor.
    assert optim.unfinished_schedule(common.recipe(name, variant)) is None
  c = common.recipe("restart")
  c.total_steps = 400  # The SGDR cycle of 1,500 steps is a fifth done.
  message = optim.unfinished_schedule(c)
  assert message and "91%" in message and "restart.py:400" in message
  c.total_steps = 10  # Inside the warmup of 100 steps.
  assert "inside the LR warmup" in optim.unfinished_schedule(c)
  c.optim.schedule = ml_collections.ConfigDict(dict(kind="constant"))
  assert optim.unfinished_schedule(c) is None
