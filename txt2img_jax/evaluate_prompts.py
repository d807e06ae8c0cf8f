"""The evaluators of a user's data: a sample grid on fixed prompts, and the
validation flow loss per t bucket on the held-out `val` split.

There is no structure to score a photo against, so what a run shows is what
it draws for the same prompts at every evaluation, and whether the flow
loss on images it never trained on keeps falling (per t bucket, so a loss
that only falls near t = 1, where the image leaks into x_t, is visible).
"""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax import evaluate
from txt2img_jax import objectives
from txt2img_jax import runfiles
from txt2img_jax.data import pipeline
from txt2img_jax.data import tokenizer as tokenizer_lib


def prompt_list(config, data, tokenizer) -> tuple[list[str], np.ndarray | None]:
  """`eval.prompts` (a list, or a text file with one prompt a line), else
  the first captions of the val split (with their images as references)."""
  prompts = config.eval.get("prompts", "")
  if isinstance(prompts, str) and prompts:
    path = os.path.expanduser(prompts)
    if not os.path.exists(path):
      raise FileNotFoundError(f"eval.prompts={prompts!r}: no such file")
    with open(path) as f:
      prompts = [l.strip() for l in f if l.strip()]
    if not prompts:
      raise ValueError(f"eval.prompts={path!r} holds no prompt")
  if prompts:
    return list(prompts), None
  n = min(config.sample.grid_size, data.split_size("val"))
  if n == 0:
    raise ValueError("no val split to take prompts from: set eval.prompts")
  val = pipeline.load_split(data, "val", n, max_len=config.data.max_len,
                            tokenizer=tokenizer)
  return list(val["caption"]), val["image"]


class PromptEvaluator:
  """sample_grid(params, step) and evaluate(params, step) for prepared data."""

  def __init__(self, config, workdir, data, parts, generate, frozen, stats,
               writer=None):
    self.config, self.workdir, self.writer = config, workdir, writer
    self.generate, self.frozen, self.stats = generate, frozen, stats
    tok = parts.text.tokenizer
    self.prompts, self.references = prompt_list(config, data, tok)
    self.ids, self.mask = tokenizer_lib.tokenize(tok, self.prompts,
                                                 config.data.max_len)
    n = min(config.eval.num, data.split_size("val"))
    self.val = (pipeline.load_split(data, "val", n, tokenizer=tok,
                                    max_len=config.data.max_len)
                if n else None)
    self._val_loss = jax.jit(_val_loss_fn(config, parts))

  def images(self, params) -> np.ndarray:
    return evaluate.generate_images(
        self.generate, params, self.frozen, self.stats, self.config.sample,
        self.ids, self.mask, self.config.eval.batch_size)

  def sample_grid(self, params, step: int) -> str:
    images = self.images(params)
    grid = evaluate.caption_grid(self.references, images, self.prompts)
    return evaluate.save_grid(grid, self.workdir, step, self.writer)

  def evaluate(self, params, step: int | None = None) -> dict[str, float]:
    """Validation flow loss, t ~ U[0, 1], conditional only, fixed noise."""
    if self.val is None:
      return {}
    bs = self.config.eval.batch_size
    keys = [k for k in ("image", "moments_mean", "moments_logvar",
                        "text_tokens") if k in self.val]
    total = bucket_sum = bucket_count = 0.0
    n = (len(self.val["ids"]) // bs) * bs or len(self.val["ids"])
    for i in range(0, n, bs):
      batch = {k: self.val[k][i:i + bs] for k in keys + ["ids", "mask"]}
      flow, s, c = self._val_loss(params, batch, jax.random.PRNGKey(i),
                                  self.frozen, self.stats)
      total += float(flow) * len(batch["ids"])
      bucket_sum = bucket_sum + np.asarray(s)
      bucket_count = bucket_count + np.asarray(c)
    out = {"val/flow": total / n}
    for b, (s, c) in enumerate(zip(bucket_sum, bucket_count)):
      if c:  # A small val split can leave a bucket empty.
        out[f"val/flow_t{b}"] = float(s / c)
    logging.info("validation%s: %s", f" at step {step}" if step else "",
                 ", ".join(f"{k}={v:.4f}" for k, v in out.items()))
    if step is not None:
      if self.writer is not None:
        self.writer.write_scalars(step, out)
      if jax.process_index() == 0:
        runfiles.append_metrics(self.workdir, {"step": step, **out})
    return out


def _val_loss_fn(config, parts):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.time.sampler = dict(kind="uniform", t_min=0.0, t_max=1.0)
    c.loss.cfg_null_prob = 0.0
  loss = objectives.get(c.get("objective", "crossflow")).make_loss(
      c, parts.model, parts.autoencoder, parts.text.frozen)

  def val(params, batch, rng, frozen, stats):
    _, aux = loss(params, batch, rng, jnp.int32(0), frozen, stats)
    return aux["flow_raw"], aux["flow_bucket_sum"], aux["flow_bucket_count"]

  return val
