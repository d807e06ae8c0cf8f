"""The analytic FLOP count against XLA's on CPU, and the perf measurement's fields.

XLA's CPU cost analysis counts every matmul (and elementwise ops too), so at
widths where matmuls dominate the two must agree within 10%.
"""

import importlib
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from txt2img_jax.train import state as state_lib
from txt2img_jax.train import validate
from txt2img_jax.train import flops
from txt2img_jax.utils import hostmem
from txt2img_jax.train import op_profile
from txt2img_jax.train import throughput
from txt2img_jax.train import sharding
from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import image_encoder
from txt2img_jax.models import text_encoder
from txt2img_jax.models import text_head

CONFIGS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"
)
B = 4


def _config(name="base", variant=""):
  return importlib.import_module(f"configs.{name}").get_config(variant)


def _xla_forward_flops(module, *args):
  variables = jax.eval_shape(module.init, jax.random.key(0, impl="rbg"), *args)
  compiled = jax.jit(module.apply).lower(variables, *args).compile()
  return throughput.xla_flops(compiled)


def _forward(rows):
  return 2.0 * B * sum(r.macs_per_example for r in rows)


def _close(ours, xla):
  assert abs(xla / ours - 1) < 0.10, (ours, xla)


def test_flow_flops_match_xla():
  c = _config()
  c.flow.update(width=256, depth=2, num_heads=4)
  latent = (16, 16, 12)
  model = dit_lib.DiT(
      latent,
      c.flow.patch_size,
      c.flow.width,
      c.flow.depth,
      c.flow.num_heads,
      scan=False,
  )
  xla = _xla_forward_flops(
      model, jnp.zeros((B, *latent)), jnp.zeros((B,)), jnp.ones((B,), jnp.int32)
  )
  _close(_forward(flops.flow_rows(c, latent)), xla)


def test_text_encoder_flops_match_xla():
  c = _config()
  c.text_encoder.update(width=256, depth=2, num_heads=4)
  model = text_encoder.SmallTextEncoder(
      vocab_size=64, max_len=c.data.max_len, width=256, depth=2, num_heads=4
  )
  ids = jnp.zeros((B, c.data.max_len), jnp.int32)
  _close(
      _forward(flops.text_encoder_rows(c)),
      _xla_forward_flops(model, ids, ids > -1),
  )


@pytest.mark.parametrize(
    "kind,fields",
    [
        ("pooled_mlp", dict(hidden=512)),
        (
            "token_transformer",
            dict(width=256, depth=2, num_heads=4, reduced_width=16),
        ),
        ("grid_query", dict(width=256, depth=2, num_heads=4, grid_size=8)),
        ("mlp_conv", dict(hidden=512, conv_width=64, num_groups=8)),
        (
            "token_splat",
            dict(width=256, depth=2, num_heads=4, content_width=64),
        ),
    ],
)
def test_text_head_flops_match_xla(kind, fields):
  c = _config()
  c.head.kind = kind
  c.head[kind].update(fields)
  latent, width = (16, 16, 12), 256
  model = text_head.make_text_head(kind, latent, **c.head[kind].to_dict())
  tokens = jnp.zeros((B, c.data.max_len, width))
  mask = jnp.ones((B, c.data.max_len), bool)
  _close(
      _forward(flops.text_head_rows(c, latent, width)),
      _xla_forward_flops(model, tokens, mask),
  )


def test_image_encoder_flops_match_xla():
  c = _config()
  c.image_encoder.update(width=128, depth=2)
  latent = (16, 16, 12)
  model = image_encoder.ImageEncoder(out_dim=16 * 16 * 12, width=128, depth=2)
  _close(
      _forward(flops.image_encoder_rows(c, latent)),
      _xla_forward_flops(model, jnp.zeros((B, *latent))),
  )


def test_train_step_flops_trainable_and_frozen():
  c = _config("restart")
  c.loss.clip_target = (
      "tower"  # The image tower runs (with "latent" it is dropped).
  )
  latent = (16, 16, 12)
  total, per_row = flops.train_step_flops(c, latent)
  forward = (
      2.0
      * c.batch_size
      * sum(r.macs_per_example for r in flops.rows(c, latent))
  )
  assert total == pytest.approx(3 * forward)
  assert set(flops.by_module(per_row)) == {
      "text_encoder",
      "text_head",
      "image_encoder",
      "flow",
      "contrastive",
  }
  # A frozen group costs its forward pass only.
  c.optim.groups.flow.trainable = False
  frozen_total, frozen_rows = flops.train_step_flops(c, latent)
  flow = flops.by_module(per_row)["flow"]
  assert flops.by_module(frozen_rows)["flow"] == pytest.approx(flow / 3)
  assert frozen_total == pytest.approx(total - flow * 2 / 3)


def test_perf_b2_hand_count():
  """DiT-B/2: 6 x (per-token matmul params) x tokens + attention, the issue's hand count."""
  c = _config("perf_b2")
  total, per_row = flops.train_step_flops(c, (32, 32, 12))
  w, depth, tokens = 768, 12, 256
  dense_params = depth * 12 * w * w
  attention = depth * 2 * 2 * tokens * tokens * w
  hand = 3 * c.batch_size * (2 * dense_params * tokens + attention)
  assert flops.by_module(per_row)["flow"] == pytest.approx(hand, rel=0.01)
  assert 34e12 < total < 38e12  # XLA's CPU count of the unrolled step: 36.6e12.


def test_measure_compiles_once_and_reports():
  c = _config("restart", "tiny")
  r = throughput.measure(c, steps=1, warmup=1, matmul_n=128)
  for key in (
      "step_time_s",
      "compile_s",
      "model_flops",
      "xla_flops",
      "achieved_flops_per_s",
      "matmul_flops_per_s",
      "utilisation",
  ):
    assert r[key] > 0, key
  assert r["achieved_flops_per_s"] == pytest.approx(
      r["model_flops"] / r["step_time_s"]
  )
  assert "model" in throughput.report(r)
  # The step is timed as training compiles it: with the config's XLA options.
  assert r["xla_options"] == {
      "xla_disable_hlo_passes": "tree_reduction_rewriter"
  }
  assert "xla_disable_hlo_passes=tree_reduction_rewriter" in throughput.report(
      r
  )
  # The host's share of a step, and the allocator setting it ran under.
  assert r["page_faults_per_step"] >= 0 and r["system_cpu_per_step_s"] >= 0
  assert r["host_malloc"] == hostmem.applied
  assert f"(allocator: {hostmem.applied})" in throughput.report(r)
  only_compile = throughput.measure(c, steps=0)
  assert only_compile["step_time_s"] is None and only_compile["compile_s"] > 0


def test_op_profile_finds_the_matmul():
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0))
  a = jnp.ones((256, 256))
  compiled = f.lower(a, a).compile()
  classes = op_profile.hlo_op_classes(compiled.as_text())
  assert "matmul" in {v[0] for v in classes.values()}, classes
  p = op_profile.op_profile(compiled, lambda: compiled(a, a), steps=2)
  kinds = {k.split(" / ")[0] for k in p["by_class"]}
  assert "matmul" in kinds and p["op_s"] > 0 and p["wall_s"] > 0, p


def test_torch_twin_of_the_dit_has_the_same_parameters():
  torch = pytest.importorskip("torch")
  from txt2img_jax.models import latents
  from experiments import flow_steps

  c = flow_steps.size_config("default")
  c.flow.update(width=64, depth=2, num_heads=2)
  shape = latents.latent_shape(c)
  f = c.flow
  model = dit_lib.DiT(shape, f.patch_size, f.width, f.depth, f.num_heads)
  b = jnp.zeros((2,))
  params = nn.unbox(
      jax.eval_shape(
          model.init,
          jax.random.PRNGKey(0),
          jnp.zeros((2, *shape)),
          b,
          b.astype(jnp.int32),
      )
  )
  twin = flow_steps.torch_dit(torch, c, shape)
  # Tensor by tensor (sizes; a torch Linear stores its kernel transposed).
  assert sorted(math.prod(p.shape) for p in jax.tree.leaves(params)) == sorted(
      p.numel() for p in twin.parameters()
  )


def test_xla_cpu_options_reach_the_train_step():
  """jit_train_step compiles with the options train_compiler_options reads:
  the default turns off XLA's tree reduction rewriter, whose split
  reductions (reduce-window) are in the step only without it."""
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  step = lambda state, batch, frozen, stats: (
      state + 1,
      jnp.sum(batch * batch, axis=0),
  )
  texts = {}
  for value in ("", _config("restart").xla_cpu_options):
    c = _config("restart", "tiny")
    c.xla_cpu_options = value
    options = validate.train_compiler_options(c)
    jitted = state_lib.jit_train_step(
        step, sharding.replicated(mesh), mesh, options
    )
    with mesh:
      texts[value] = (
          jitted.lower(jnp.zeros(()), jnp.ones((64, 4096)), {}, {})
          .compile()
          .as_text()
      )
  assert "reduce-window" in texts[""]
  assert "reduce-window" not in texts[_config("restart").xla_cpu_options]


def test_xla_options_parse_and_fail_in_one_line():
  assert validate.parse_xla_options("") == {}
  assert validate.parse_xla_options(
      " xla_disable_hlo_passes=a,b ; xla_cpu_enable_fast_math=False;xla_x=3;xla_y=0.5"
  ) == {
      "xla_disable_hlo_passes": "a,b",
      "xla_cpu_enable_fast_math": False,
      "xla_x": 3,
      "xla_y": 0.5,
  }
  for bad in (
      "tree_reduction_rewriter",
      "disable=1",
      "xla_a=",
      "xla_a=1;xla_a=2",
  ):
    with pytest.raises(ValueError, match="xla_cpu_options"):
      validate.parse_xla_options(bad)
  c = _config("restart", "tiny")
  c.xla_cpu_options = "xla_no_such_option=1"
  with pytest.raises(ValueError, match="xla_cpu_options=.*xla_no_such_option"):
    validate.validate_config(c)
  c.xla_cpu_options = "xla_cpu_enable_fast_math=maybe"
  with pytest.raises(ValueError, match="not a valid bool"):
    validate.validate_config(c)


def test_torch_compare_variants_sit_on_the_trainer_options():
  from experiments import torch_compare

  base = validate.train_compiler_options(_config("restart"))
  assert base == {"xla_disable_hlo_passes": "tree_reduction_rewriter"}
  assert torch_compare.variant_options("none", base) == {}
  assert torch_compare.variant_options(
      "xla_cpu_enable_fast_math=true", base
  ) == {**base, "xla_cpu_enable_fast_math": True}
  with pytest.raises(ValueError, match="--xla_option='fast'"):
    torch_compare.variant_options("fast", base)
