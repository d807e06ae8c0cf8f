"""The flow network's train step, built twice: in JAX and in PyTorch.

Both build the DiT of `models/dit.py` at a recipe's sizes (`SIZES`) and run
forward, MSE to a target, backward and AdamW on the same synthetic batch: JAX
as one compiled step, PyTorch eagerly (`torch_dit` is the network module for
module). experiments/torch_compare.py times the two against each other.
PyTorch is imported only when a PyTorch step is built.
"""

from __future__ import annotations

import importlib
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from txt2img_jax.train import flops as flops_lib
from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import layers

SIZES = {
    "default": {},
    "mid": {
        "flow.width": 384,
        "flow.depth": 6,
        "flow.num_heads": 6,
        "data.image_size": 64,
        "batch_size": 32,
    },
}
LR, WEIGHT_DECAY = 1e-4, 0.01  # The same AdamW on both sides.
LN_EPS = 1e-6  # flax.linen.LayerNorm's default.


def size_config(size: str, recipe: str = "restart"):
  if size not in SIZES:
    raise ValueError(f"size {size!r}: expected one of {sorted(SIZES)}")
  c = importlib.import_module(f"configs.{recipe}").get_config()
  for key, value in SIZES[size].items():
    node, _, leaf = key.rpartition(".")
    (c[node] if node else c)[leaf] = value
  c.dtype = "float32"
  return c


def flow_step_flops(config, latent_shape) -> float:
  """Model FLOPs of one flow-only train step (forward + backward = 3x forward)."""
  macs = sum(
      r.macs_per_example for r in flops_lib.flow_rows(config, latent_shape)
  )
  return 3 * 2 * config.batch_size * macs


def synthetic(config, latent_shape, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  b = config.batch_size
  return {
      "x": rng.standard_normal((b, *latent_shape)).astype(np.float32),
      "target": rng.standard_normal((b, *latent_shape)).astype(np.float32),
      "t": rng.uniform(size=(b,)).astype(np.float32),
      "indicator": np.ones((b,), np.int32),
  }


# --- JAX ---------------------------------------------------------------------


def jax_step(config, latent_shape, data, compiler_options: dict | None = None):
  """(step, state, batch, count): the compiled flow-only train step, its first
  state and batch, and the parameter count. compiler_options: XLA debug
  options for this compilation only (e.g. {"xla_cpu_enable_fast_math": True}).
  """
  f = config.flow
  model = dit_lib.DiT(
      latent_shape,
      f.patch_size,
      f.width,
      f.depth,
      f.num_heads,
      mlp_ratio=f.mlp_ratio,
      time_embed_dim=f.get("time_embed_dim"),
      scan=f.get("scan", False),
      remat=f.get("remat", "none"),
  )
  x, t, ind = (jnp.asarray(data[k]) for k in ("x", "t", "indicator"))
  params = jax.jit(
      lambda: nn.unbox(model.init(jax.random.PRNGKey(0), x, t, ind))
  )()
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

  def step(params, opt_state, batch):
    def loss_fn(p):
      v = model.apply(p, batch["x"], batch["t"], batch["indicator"])
      return jnp.mean((v - batch["target"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batch = {k: jnp.asarray(v) for k, v in data.items()}
  state = (params, tx.init(params))
  compiled = (
      jax.jit(step, donate_argnums=(0, 1))
      .lower(*state, batch)
      .compile(compiler_options=compiler_options or None)
  )
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return compiled, state, batch, count


def time_jax(compiled, state, batch, steps: int):
  params, opt_state = state
  t0 = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = compiled(params, opt_state, batch)
  loss.block_until_ready()
  return (time.perf_counter() - t0) / steps, (params, opt_state)


# --- PyTorch -----------------------------------------------------------------


def import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError(
        "torch_compare needs PyTorch (an optional benchmark dependency): "
        "pip install torch==2.13.0 --index-url "
        "https://download.pytorch.org/whl/cpu"
    ) from e
  return torch


def torch_dit(torch, config, latent_shape):
  """models/dit.py's DiT, module for module, in PyTorch."""
  tnn, F = torch.nn, torch.nn.functional
  f = config.flow
  h, w, ch = latent_shape
  p, width, heads = f.patch_size, f.width, f.num_heads
  hidden = int(width * f.mlp_ratio)
  freq_dim = f.get("time_embed_dim") or width

  def norm(x):
    return F.layer_norm(x, (width,), eps=LN_EPS)

  def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]

  class Block(tnn.Module):

    def __init__(self):
      super().__init__()
      self.modulation = tnn.Linear(width, 6 * width)
      self.query, self.key, self.value, self.out = (
          tnn.Linear(width, width) for _ in range(4)
      )
      self.fc1, self.fc2 = tnn.Linear(width, hidden), tnn.Linear(hidden, width)

    def attention(self, x):
      b, n, _ = x.shape
      q, k, v = (
          m(x).view(b, n, heads, -1).transpose(1, 2)
          for m in (self.query, self.key, self.value)
      )
      probs = torch.softmax(
          q @ k.transpose(-1, -2) / math.sqrt(width // heads), -1
      )
      return self.out((probs @ v).transpose(1, 2).reshape(b, n, width))

    def forward(self, x, c):
      sa, ca, ga, sm, cm, gm = self.modulation(F.silu(c)).chunk(6, dim=-1)
      x = x + ga[:, None] * self.attention(modulate(norm(x), sa, ca))
      y = self.fc2(
          F.gelu(self.fc1(modulate(norm(x), sm, cm)), approximate="tanh")
      )
      return x + gm[:, None] * y

  class DiT(tnn.Module):

    def __init__(self):
      super().__init__()
      self.patch_embed = tnn.Linear(p * p * ch, width)
      self.register_buffer(
          "pos", torch.from_numpy(layers.sincos_2d(width, h // p, w // p))
      )
      self.register_buffer(
          "freqs",
          torch.from_numpy(
              np.exp(
                  np.linspace(np.log(1000.0), np.log(0.05), freq_dim // 2)
              ).astype(np.float32)
          ),
      )
      self.time_fc1 = tnn.Linear(freq_dim, width)
      self.time_fc2 = tnn.Linear(width, width)
      self.indicator_embed = tnn.Embedding(dit_lib.NUM_INDICATORS, width)
      self.blocks = tnn.ModuleList(Block() for _ in range(f.depth))
      self.final_modulation = tnn.Linear(width, 2 * width)
      self.final = tnn.Linear(width, p * p * ch)

    def forward(self, x, t, indicator):
      b = x.shape[0]
      x = x.view(b, h // p, p, w // p, p, ch).permute(0, 1, 3, 2, 4, 5)
      tokens = self.patch_embed(x.reshape(b, -1, p * p * ch)) + self.pos
      angles = t[:, None] * self.freqs[None]
      feats = torch.cat([torch.cos(angles), torch.sin(angles)], -1)
      c = self.time_fc2(F.silu(self.time_fc1(feats))) + self.indicator_embed(
          indicator
      )
      for block in self.blocks:
        tokens = block(tokens, c)
      shift, scale = self.final_modulation(F.silu(c)).chunk(2, dim=-1)
      out = self.final(modulate(norm(tokens), shift, scale))
      out = out.view(b, h // p, w // p, p, p, ch).permute(0, 1, 3, 2, 4, 5)
      return out.reshape(b, h, w, ch)

  return DiT()


def torch_step(torch, config, latent_shape, data):
  model = torch_dit(torch, config, latent_shape)
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  batch = {k: torch.from_numpy(v) for k, v in data.items()}
  batch["indicator"] = batch["indicator"].long()

  def step():
    opt.zero_grad(set_to_none=True)
    v = model(batch["x"], batch["t"], batch["indicator"])
    loss = torch.mean((v - batch["target"]) ** 2)
    loss.backward()
    opt.step()
    return loss

  count = sum(p.numel() for p in model.parameters())
  return step, count


def time_torch(step, steps: int) -> float:
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - t0) / steps
