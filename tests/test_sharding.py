"""The sharded train step on 8 fake CPU devices equals the one-device step,
data-parallel, with tensor-parallel rules and with the fsdp preset (which
really leaves each device ~1/8 of the state), and compiles once.

XLA fixes the device count when JAX starts, so the check runs in a fresh
process with --xla_force_host_platform_device_count=8.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import importlib, json, os, sys
sys.path.insert(0, sys.argv[1])  # The repo: its configs package.
import jax, jax.numpy as jnp, numpy as np
from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import sharding
from txt2img_jax.train import step as step_lib
from txt2img_jax.data import shapes, tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib

assert jax.device_count() == 8, jax.devices()
base = importlib.import_module("configs.base")
c = base.get_config("tiny")
c.head.kind = "token_transformer"  # Attention and MLP kernels to shard.
parts = run_lib.build_parts(c)
latent_shape = parts.latent_shape
tok = parts.text.tokenizer
model = parts.model
rng = np.random.default_rng(0)
examples = [shapes.example(0, "train", i) for i in range(3 * c.batch_size)]
ch = latent_shape[-1]
stats = ae_lib.LatentStats(shift=np.zeros((ch,), np.float32),
                           scale=np.full((ch,), 0.5, np.float32))

def host_batch(k):
  ex = examples[k * c.batch_size:(k + 1) * c.batch_size]
  ids, mask = tokenizer_lib.tokenize(tok, [e["caption"] for e in ex], c.data.max_len)
  return {"image": np.stack([e["image"] for e in ex]).astype(np.float32) / 255,
          "ids": ids, "mask": mask}

def run(mesh, rules):
  tx, schedules, state, shards = state_lib.create_train_state(
      c, model, latent_shape, c.text_encoder.width, mesh, rules)
  step = state_lib.jit_train_step(
      step_lib.for_parts(c, parts, tx, schedules), shards, mesh)
  losses = []
  with mesh:
    for k in range(3):
      state, metrics = step(state, sharding.put_batch(host_batch(k), mesh), {}, stats)
      losses.append(float(metrics["loss"]))
  specs = sorted({str(s.spec) for s in jax.tree.leaves(shards.params)})
  # Bytes of params and optimizer state on each device, over the total.
  share = {}
  for name in ("params", "opt_state"):
    leaves = jax.tree.leaves(getattr(state, name))
    total = sum(x.nbytes for x in leaves)
    per = {}
    for x in leaves:
      for shard in x.addressable_shards:
        per[shard.device.id] = per.get(shard.device.id, 0) + shard.data.nbytes
    share[name] = [per[d] / total for d in sorted(per)]
  return (losses, jax.device_get(state.params), step._cache_size(), specs,
          share)

rules = sharding.logical_rules(c.mesh.rules)
one = run(sharding.make_mesh(1, 1, jax.devices()[:1]), rules)
dp = run(sharding.make_mesh(8, 1), rules)
tp = run(sharding.make_mesh(4, 2), rules)
fsdp = run(sharding.make_mesh(8, 1), sharding.logical_rules(c.mesh.rules, "fsdp"))
out = {"losses": [one[0], dp[0], tp[0], fsdp[0]],
       "compiles": [one[2], dp[2], tp[2], fsdp[2]], "tp_specs": tp[3],
       "dp_share": dp[4], "fsdp_share": fsdp[4]}
# Attention key biases have an exactly zero gradient (the softmax ignores a
# constant added to every logit of a query), so Adam turns rounding noise
# into updates of ~1e-5 there; they are compared on their size instead.
# Under fsdp the gradients are reduce-scattered, another summation order:
# the zero-initialised adaLN modulation kernels (max |w| ~ 1.7e-4 after three
# steps) then differ by ~1.4e-6 where Adam normalises near-zero gradients,
# 0.85% of their size; so fsdp is compared as the multi-host test compares
# states, |a - b| <= 1e-5 * max(1, max |a|), and the others on each leaf's size.
diffs, key_bias, fsdp_abs = [], [], 0.0
flat_one = jax.tree_util.tree_flatten_with_path(one[1])[0]
for other in (dp, tp, fsdp):
  worst = 0.0
  for (path, a), b in zip(flat_one, jax.tree.leaves(other[1])):
    if "['key']['bias']" in jax.tree_util.keystr(path):
      key_bias.append(float(np.max(np.abs(b))))
      continue
    if other is fsdp:
      fsdp_abs = max(fsdp_abs, float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a))))))
      continue
    worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-8)))
  if other is not fsdp:
    diffs.append(worst)
out["param_rel_diff"] = diffs
out["fsdp_param_diff"] = fsdp_abs
out["key_bias_max"] = max(key_bias) if key_bias else 0.0
print("RESULT " + json.dumps(out))
"""


def test_sharded_step_matches_one_device():
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
      + " --xla_force_host_platform_device_count=8",
      PYTHONPATH=REPO,
  )
  r = subprocess.run(
      [sys.executable, "-c", SCRIPT, REPO],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      cwd=REPO,
  )
  assert r.returncode == 0, r.stderr[-4000:]
  line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT ") :])
  one, dp, tp, fsdp = out["losses"]
  # The same three steps: equal losses up to reduction order.
  for other in (dp, tp, fsdp):
    for a, b in zip(one, other):
      assert abs(a - b) <= 1e-4 * abs(a), (one, other)
  assert max(out["param_rel_diff"]) < 1e-4, out["param_rel_diff"]
  assert out["fsdp_param_diff"] <= 1e-5, out["fsdp_param_diff"]
  assert out["key_bias_max"] < 1e-4, out["key_bias_max"]
  # Each configuration compiled its step once for three steps.
  assert out["compiles"] == [1, 1, 1, 1]
  # fsdp equals data parallel step for step...
  for a, b in zip(dp, fsdp):
    assert abs(a - b) <= 1e-5 * abs(a), (dp, fsdp)
  # ... and each of the 8 devices holds ~1/8 of the parameters and of the
  # Adam moments (a few small leaves the axis does not divide stay whole),
  # where data parallel keeps a whole copy on each.
  for name in ("params", "opt_state"):
    assert out["dp_share"][name] == [1.0] * 8
    assert all(1 / 8 <= f <= 1.05 / 8 for f in out["fsdp_share"][name]), out[
        "fsdp_share"
    ]
  # The tensor-parallel rules really split kernels over 'model'.
  assert any("model" in s for s in out["tp_specs"]), out["tp_specs"]
