"""The flow network's train step in JAX against the same network in PyTorch eager.

  python -m experiments.torch_compare [--sizes=default,mid]
      [--repeats=5] [--round_steps=3] [--threads=2] [--out=F.json]
      [--xla_option=none] [--xla_option=xla_cpu_enable_fast_math=true ...]
      [--jax_only]

Both sides build the DiT of `models/dit.py` at a recipe's sizes (patch
embedding, fixed sin-cos positions, time MLP, indicator embedding, adaLN-Zero
blocks, adaLN final layer) and run forward, MSE to a target, backward and
AdamW: JAX as one jitted step (compiled with the recipe's `xla_cpu_options`,
as the trainer compiles its step), PyTorch eagerly on `--threads` threads. The
two are timed interleaved (JAX, then PyTorch, `--repeats` times) so that load
from other processes falls on both alike, and the medians are reported with
the XLA float32 matmul rate measured in the same process between them.

Sizes: `default` is configs/restart.py (width 192, depth 4, 64 tokens, batch
64); `mid` is width 384, depth 6, 6 heads, 256 tokens (64 px), batch 32.

PyTorch is an optional benchmark dependency (requirements.txt pins the CPU
build for tests); nothing else in the package imports it.
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
import time

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from txt2img_jax.train import validate
from txt2img_jax.train import flops as flops_lib
from txt2img_jax.models import latents
from txt2img_jax.train import throughput
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


def _import_torch():
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


# --- The comparison ----------------------------------------------------------


def variant_options(text: str, base: dict) -> dict:
  """An --xla_option: 'none' (XLA's defaults), else 'name=value[;...]' on top
  of `base` (the options the trainer compiles its step with)."""
  if text == "none":
    return {}
  try:
    return {**base, **validate.parse_xla_options(text)}
  except ValueError as e:
    raise ValueError(f"--xla_option={text!r}: {e}") from None


def compare(
    size: str,
    repeats: int = 5,
    steps: int = 3,
    threads: int = 2,
    recipe: str = "restart",
    with_torch: bool = True,
    variants: dict[str, dict] | None = None,
) -> dict:
  """Times the JAX step (and each variant: XLA options) and the PyTorch one,
  interleaved round by round."""
  config = size_config(size, recipe)
  latent_shape = latents.latent_shape(config)
  data = synthetic(config, latent_shape)
  # As training compiles its step: with the config's XLA options.
  base = validate.train_compiler_options(config) or {}
  t0 = time.perf_counter()
  compiled, state, batch, jax_count = jax_step(config, latent_shape, data, base)
  compile_s = time.perf_counter() - t0
  _, state = time_jax(compiled, state, batch, 1)  # Warm-up.
  others = {}
  for name, text in (variants or {}).items():
    options = variant_options(text, base)
    v_compiled, v_state, _, _ = jax_step(config, latent_shape, data, options)
    _, v_state = time_jax(v_compiled, v_state, batch, 1)
    others[name] = [v_compiled, v_state, []]
  if with_torch:
    torch = _import_torch()
    torch.set_num_threads(threads)
    t_step, torch_count = torch_step(torch, config, latent_shape, data)
    if torch_count != jax_count:
      raise AssertionError(
          f"parameter counts differ: JAX {jax_count}, " f"PyTorch {torch_count}"
      )
    time_torch(t_step, 1)  # Warm-up.
  jax_s, torch_s, matmul = [], [], []
  for _ in range(repeats):
    dt, state = time_jax(compiled, state, batch, steps)
    jax_s.append(dt)
    for v in others.values():
      v_dt, v[1] = time_jax(v[0], v[1], batch, steps)
      v[2].append(v_dt)
    matmul.append(
        throughput.matmul_flops_per_s(jnp.float32, 2048, min_seconds=0.5)
    )
    if with_torch:
      torch_s.append(time_torch(t_step, steps))
  model_flops = flow_step_flops(config, latent_shape)
  jax_med = statistics.median(jax_s)
  matmul_med = statistics.median(matmul)
  r = {
      "size": size,
      "width": config.flow.width,
      "depth": config.flow.depth,
      "heads": config.flow.num_heads,
      "batch": config.batch_size,
      "tokens": math.prod(latent_shape[:2]) // config.flow.patch_size**2,
      "params": jax_count,
      "compile_s": compile_s,
      "model_flops": model_flops,
      "jax_s": jax_med,
      "jax_all_s": jax_s,
      "matmul_flops_per_s": matmul_med,
      "matmul_all": matmul,
      "jax_utilisation": model_flops / jax_med / matmul_med,
      "repeats": repeats,
      "steps": steps,
      "threads": threads,
      "xla_options": base,
      "variants": {
          name: {
              "options": variant_options(variants[name], base),
              "jax_s": statistics.median(v[2]),
              "jax_all_s": v[2],
          }
          for name, v in others.items()
      },
  }
  if with_torch:
    torch_med = statistics.median(torch_s)
    r.update(
        {
            "torch_s": torch_med,
            "torch_all_s": torch_s,
            "torch_utilisation": model_flops / torch_med / matmul_med,
            "torch_over_jax": torch_med / jax_med,
            "torch_version": torch.__version__,
        }
    )
  return r


def report(r: dict) -> str:
  lines = [
      f"{r['size']}: width {r['width']}, depth {r['depth']}, {r['heads']} heads, "
      f"{r['tokens']} tokens, batch {r['batch']}, {r['params'] / 1e6:.2f} M params, "
      f"{r['model_flops'] / 1e9:.1f} GFLOP/step",
      f"  JAX     {r['jax_s']:.3f} s/step (median of {r['repeats']} x "
      f"{r['steps']}; {min(r['jax_all_s']):.3f}-{max(r['jax_all_s']):.3f}), "
      f"{r['jax_utilisation']:.2f} of the matmul rate; compile {r['compile_s']:.1f} s"
      + "".join(f"; {k}={v}" for k, v in r.get("xla_options", {}).items()),
  ]
  if "torch_s" in r:
    lines.append(
        f"  PyTorch {r['torch_s']:.3f} s/step ({min(r['torch_all_s']):.3f}-"
        f"{max(r['torch_all_s']):.3f}), {r['torch_utilisation']:.2f} of the "
        f"matmul rate; PyTorch/JAX time {r['torch_over_jax']:.2f}"
    )
  for name, v in r["variants"].items():
    lines.append(
        f"  JAX with {name}: {v['jax_s']:.3f} s/step "
        f"({min(v['jax_all_s']):.3f}-{max(v['jax_all_s']):.3f}), "
        f"{v['jax_s'] / r['jax_s']:.2f}x the plain JAX time"
    )
  lines.append(
      f"  XLA f32 2048^3 matmul {r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s "
      f"(median; {min(r['matmul_all']) / 1e9:.1f}-"
      f"{max(r['matmul_all']) / 1e9:.1f})"
  )
  return "\n".join(lines)


_SIZES = flags.DEFINE_list("sizes", ["default", "mid"], f"Of {sorted(SIZES)}.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved JAX/PyTorch rounds.")
_STEPS = flags.DEFINE_integer("round_steps", 3, "Steps per side per round.")
_THREADS = flags.DEFINE_integer("threads", 2, "torch.set_num_threads.")
_RECIPE = flags.DEFINE_string(
    "recipe", "restart", "configs/<recipe>.py to size from."
)
_XLA_OPTIONS = flags.DEFINE_multi_string(
    "xla_option",
    [],
    "Also time the JAX step compiled with these XLA options "
    "(xla_<name>=<value>[;...], on top of the config's xla_cpu_options; 'none': "
    "XLA's defaults; repeatable, one variant each), interleaved.",
)
_NO_TORCH = flags.DEFINE_bool("jax_only", False, "Time the JAX step alone.")
_JSON = flags.DEFINE_string("out", "", "Also write the results (JSON) here.")


def main(argv):
  del argv
  results = []
  for size in _SIZES.value:
    variants = {o: o for o in _XLA_OPTIONS.value}
    for o in variants.values():
      variant_options(o, {})  # A bad option fails before anything runs.
    r = compare(
        size,
        _REPEATS.value,
        _STEPS.value,
        _THREADS.value,
        _RECIPE.value,
        with_torch=not _NO_TORCH.value,
        variants=variants,
    )
    print(report(r), flush=True)
    results.append(r)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  from txt2img_jax import cli

  cli.run(main)
