"""The noise-path control (objective noise_flow, configs/noise_control.py): its
loss, its caption conditioning and null condition, its sampler with CFG, a
tiny run end to end, and an overfit on one batch."""

import importlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.models import latents
from txt2img_jax import objectives
from txt2img_jax.train import loop as train
from experiments import common
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import dit_params
import test_train

VOCAB = 20
B = 4


def tiny_config(**overrides):
  return test_train.tiny_config("noise_control", **overrides)


@pytest.fixture(scope="module")
def parts():
  c = tiny_config()
  shape = latents.latent_shape(c)
  objective = objectives.get(c.objective)
  model = objective.build_model(c, shape, VOCAB, True)
  params = nn.unbox(
      state_lib.init_variables(
          model, c, shape, c.text_encoder.width, jax.random.PRNGKey(0)
      )
  )
  ae = latents.build(c)
  stats = ae_lib.LatentStats(
      shift=jnp.zeros(shape[-1]), scale=jnp.ones(shape[-1])
  )
  rng = np.random.default_rng(0)
  batch = {
      "ids": jnp.asarray(
          rng.integers(1, VOCAB, (B, c.data.max_len)), jnp.int32
      ),
      "mask": jnp.ones((B, c.data.max_len), jnp.int32),
      "image": jnp.asarray(rng.uniform(0, 1, (B, 32, 32, 3)), jnp.float32),
  }
  frozen = {"latent": ae.params}
  return dict(
      config=c,
      shape=shape,
      objective=objective,
      model=model,
      params=params,
      ae=ae,
      stats=stats,
      batch=batch,
      frozen=frozen,
  )


def perturbed(params, scale=0.05, seed=1):
  """Params with every leaf moved off its init, so the zero-initialised
  output layers no longer hide the caption's effect."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
      tree,
      [
          l + scale * jax.random.normal(k, l.shape, l.dtype)
          for l, k in zip(leaves, keys)
      ],
  )


def test_config_keeps_restarts_budget_and_sizes():
  # The control is the velocity recipe on the noise path (its tables were
  # measured so): restart.py's "velocity" variant, field for field.
  restart = importlib.import_module("configs.restart").get_config(
      "tiny,velocity"
  )
  c = tiny_config()
  assert c.objective == "noise_flow"
  for key in (
      "total_steps",
      "batch_size",
      "flow",
      "text_encoder",
      "optim",
      "sample",
      "eval",
      "data",
      "ema_decay",
  ):
    assert c[key] == restart[key], key
  full = importlib.import_module("configs.noise_control")
  with pytest.raises(ValueError, match="tiny"):
    full.get_config("huge")


def test_model_has_only_the_text_encoder_and_the_flow_groups(parts):
  assert set(parts["params"]) == {"text_encoder", "flow"}
  flow = parts["params"]["flow"]
  assert {"text_pool", "text_proj", "null_token"} <= set(flow)
  assert "cross_attn" in flow["block_0"]


def test_loss_is_finite_and_trains_the_output_layer(parts):
  p = parts
  loss_fn = p["objective"].make_loss(p["config"], p["model"], p["ae"], None)
  (total, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      p["params"],
      p["batch"],
      jax.random.PRNGKey(3),
      jnp.int32(0),
      p["frozen"],
      p["stats"],
  )
  assert np.isfinite(float(total))
  # The flow term is the whole loss (weight 1; no text-latent terms).
  assert float(aux["flow_raw"]) == pytest.approx(float(total))
  assert aux["flow_bucket_count"].sum() == B
  assert float(aux["kl_raw"]) == 0.0 and float(aux["clip_raw"]) == 0.0
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert float(optax.tree.norm(grads["flow"]["final"])) > 0


def test_null_condition_ignores_the_caption(parts):
  p = parts
  params = perturbed(p["params"])
  x = jax.random.normal(jax.random.PRNGKey(4), (2,) + p["shape"])
  t = jnp.full((2,), 0.5)
  tokens_a = jax.random.normal(
      jax.random.PRNGKey(5), (2, 24, p["config"].text_encoder.width)
  )
  tokens_b = jax.random.normal(jax.random.PRNGKey(6), tokens_a.shape)
  mask = jnp.ones((2, 24), jnp.int32)

  def v(tokens, indicator):
    return p["model"].apply(
        {"params": params},
        x,
        t,
        jnp.full((2,), indicator, jnp.int32),
        tokens,
        mask,
        method="velocity",
    )

  np.testing.assert_allclose(v(tokens_a, 0), v(tokens_b, 0), atol=1e-6)
  assert float(jnp.abs(v(tokens_a, 1) - v(tokens_b, 1)).max()) > 1e-3
  assert float(jnp.abs(v(tokens_a, 1) - v(tokens_a, 0)).max()) > 1e-3


def test_sampler_draws_images_and_cfg_zero_is_the_null_condition(parts):
  p = parts
  params = perturbed(p["params"])
  generate = run_lib.make_generate_fn(p["config"], p["model"], p["ae"], None)
  ids_a = p["batch"]["ids"]
  ids_b = jnp.flip(ids_a, axis=1)
  mask = p["batch"]["mask"]
  rng = jax.random.PRNGKey(7)

  def draw(ids, cfg_scale, method="euler"):
    return np.asarray(
        generate(
            params,
            p["frozen"],
            p["stats"],
            ids,
            mask,
            rng,
            num_steps=3,
            method=method,
            cfg_scale=cfg_scale,
            use_mean=True,
        )
    )

  images = draw(ids_a, 1.0)
  assert images.shape == (B, 32, 32, 3)
  assert np.all(np.isfinite(images))
  assert images.min() >= 0.0 and images.max() <= 1.0
  # Guidance 0 follows v_null alone: the caption cannot matter.
  np.testing.assert_allclose(draw(ids_a, 0.0), draw(ids_b, 0.0), atol=1e-5)
  assert np.abs(draw(ids_a, 1.0) - draw(ids_b, 1.0)).max() > 1e-4
  assert np.abs(draw(ids_a, 3.0) - images).max() > 1e-4
  assert np.all(np.isfinite(draw(ids_a, 3.0, "heun")))


def test_text_conditioning_is_declared_both_ways():
  dit = dit_lib.DiT(
      latent_shape=(4, 4, 2), patch_size=2, width=16, depth=1, num_heads=2
  )
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="text_conditioning"):
    dit.init(
        jax.random.PRNGKey(0),
        x,
        jnp.zeros((1,)),
        jnp.ones((1,), int),
        jnp.zeros((1, 3, 8)),
    )


def test_scanned_text_conditioned_dit_matches_the_unrolled_one():
  kw = dict(
      latent_shape=(4, 4, 2),
      patch_size=2,
      width=16,
      depth=2,
      num_heads=2,
      text_conditioning=True,
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 2))
  args = (
      x,
      jnp.array([0.2, 0.7]),
      jnp.array([1, 0]),
      jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8)),
      jnp.array([[1, 1, 0], [1, 1, 1]]),
  )
  unrolled = dit_lib.DiT(**kw)
  params = perturbed(
      nn.unbox(unrolled.init(jax.random.PRNGKey(2), *args)["params"])
  )
  scanned = dit_lib.DiT(scan=True, **kw)
  stacked = dit_params.stack_block_params(params)
  np.testing.assert_allclose(
      unrolled.apply({"params": params}, *args),
      scanned.apply({"params": stacked}, *args),
      rtol=1e-4,
      atol=1e-5,
  )


def test_loss_falls_when_overfitting_one_batch(parts):
  p = parts
  loss_fn = p["objective"].make_loss(p["config"], p["model"], p["ae"], None)
  tx = optax.adam(2e-3)
  eval_keys = jax.random.split(jax.random.PRNGKey(11), 16)

  @jax.jit
  def mean_loss(params):
    return jax.vmap(
        lambda k: loss_fn(
            params, p["batch"], k, jnp.int32(0), p["frozen"], p["stats"]
        )[0]
    )(eval_keys).mean()

  @jax.jit
  def step(params, opt, key):
    grads = jax.grad(
        lambda q: loss_fn(
            q, p["batch"], key, jnp.int32(0), p["frozen"], p["stats"]
        )[0]
    )(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  params, opt = p["params"], tx.init(p["params"])
  before = float(mean_loss(params))
  for i in range(300):
    params, opt = step(params, opt, jax.random.PRNGKey(100 + i))
  after = float(mean_loss(params))
  # The health check's bar (docs/health.md): the flow loss falls by > 20%.
  assert after < 0.8 * before, (before, after)


def test_tiny_run_trains_samples_and_reloads(data_dir, tmp_path):
  workdir = str(tmp_path / "noise_control")
  out = train.train_and_evaluate(tiny_config(), workdir)
  assert out["compiles"] == 1
  assert np.isfinite(out["train"]["train/loss"])
  assert (
      "eval/object_acc" in out["eval"] and "heldout/object_acc" in out["eval"]
  )
  assert os.path.exists(os.path.join(workdir, "samples", "latest.png"))
  run = run_lib.load_run(workdir, with_data=False)
  assert run.step == 6 and set(run.ema_params) == {"text_encoder", "flow"}
  ids = np.ones((2, run.config.data.max_len), np.int32)
  images = run.generate(
      run.ema_params,
      run.frozen,
      run.stats,
      ids,
      ids,
      jax.random.PRNGKey(0),
      num_steps=2,
      method="euler",
      cfg_scale=2.0,
      use_mean=True,
  )
  assert images.shape == (2, 32, 32, 3) and np.all(np.isfinite(images))
  # Scored as the sweep scores a run: the benchmark, no z_text measures (this
  # path has no text latent), and the second call reads the cache.
  summary = common.score(workdir, run.config.eval.num)
  assert "eval/object_acc" in summary and "ztext/corr" not in summary
  assert common.score(workdir, run.config.eval.num) == summary
