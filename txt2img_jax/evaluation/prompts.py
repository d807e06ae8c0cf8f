"""The evaluators of a user's data: a sample grid on fixed prompts, the
validation flow loss per t bucket on the held-out `val` split, and the mosaic
measures of images drawn for val captions.

There is no structure to score a photo against, so what a run shows is what
it draws for the same prompts at every evaluation, and whether the flow
loss on images it never trained on keeps falling (per t bucket, so a loss
that only falls near t = 1, where the image leaks into x_t, is visible),
the z_text measures of the val captions, the blockiness and high-frequency
energy of samples drawn for val captions against the training images
(`blockiness.py`: ~1 when the samples are as smooth as the data, high when
they fall apart along the token grid while the loss falls, the seed's
failure), and with `eval.clip_model` (a local CLIP folder) the CLIP score of
the prompts' samples.
"""

from __future__ import annotations

import types

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.evaluation import blockiness
from txt2img_jax.evaluation import fd_measure
from txt2img_jax.evaluation import structure
from txt2img_jax import objectives
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.objectives import ztext
from txt2img_jax.data import pipeline
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import generator as generator_lib


def prompt_list(config, data, tokenizer) -> tuple[list[str], np.ndarray | None]:
  """`eval.prompts` (a list, or a text file with one prompt a line), else
  the first captions of the val split (with their images as references)."""
  prompts = config.eval.prompts
  if isinstance(prompts, str) and prompts:
    path = paths.abspath(prompts)  # A local file or a bucket URL.
    if not paths.isfile(path):
      raise FileNotFoundError(f"eval.prompts={prompts!r}: no such file")
    text = paths.read_bytes(path).decode("utf-8")
    prompts = [l.strip() for l in text.splitlines() if l.strip()]
    if not prompts:
      raise ValueError(f"eval.prompts={path!r} holds no prompt")
  if prompts:
    return list(prompts), None
  n = min(config.sample.grid_size, data.split_size("val"))
  if n == 0:
    raise ValueError("no val split to take prompts from: set eval.prompts")
  val = pipeline.load_split(
      data, "val", n, max_len=config.data.max_len, tokenizer=tokenizer
  )
  return list(val["caption"]), val["image"]


class PromptEvaluator:
  """sample_grid(params, step) and evaluate(params, step) for prepared data."""

  def __init__(
      self, config, workdir, data, parts, generate, frozen, stats, writer=None
  ):
    self.config, self.workdir, self.writer = config, workdir, writer
    self.generate, self.frozen, self.stats = generate, frozen, stats
    tok = parts.text.tokenizer
    self.prompts, self.references = prompt_list(config, data, tok)
    self.ids, self.mask = tokenizer_lib.tokenize(
        tok, self.prompts, config.data.max_len
    )
    n = min(config.eval.num, data.split_size("val"))
    self.val = (
        pipeline.load_split(
            data, "val", n, tokenizer=tok, max_len=config.data.max_len
        )
        if n
        else None
    )
    self.mosaic = _MosaicMeasure(config, data, parts, tok, self.val)
    self.fd = fd_measure.FdMeasure(config, data, tok)
    self._val_loss = jax.jit(_val_loss_fn(config, parts))
    self._posterior_mean = jax.jit(_posterior_mean_fn(parts))
    self._latent_side = types.SimpleNamespace(
        autoencoder=parts.autoencoder, stats=stats
    )
    clip_model = config.eval.clip_model
    self.clip = ClipScorer(clip_model) if clip_model else None

  def images(self, params) -> np.ndarray:
    return self.images_for(params, self.ids, self.mask)

  def images_for(self, params, ids, mask) -> np.ndarray:
    return structure.generate_images(
        self.generate,
        params,
        self.frozen,
        self.stats,
        self.config.sample,
        ids,
        mask,
        self.config.eval.batch_size,
    )

  def sample_grid(self, params, step: int) -> str:
    images = self.images(params)
    grid = structure.caption_grid(self.references, images, self.prompts)
    return structure.save_grid(grid, self.workdir, step, self.writer)

  def evaluate(self, params, step: int | None = None) -> dict[str, float]:
    """Validation flow loss, t ~ U[0, 1], conditional only, fixed noise."""
    if self.val is None:
      return {}
    bs = self.config.eval.batch_size
    keys = [
        k
        for k in ("image", "moments_mean", "moments_logvar", "text_tokens")
        if k in self.val
    ]
    total = bucket_sum = bucket_count = 0.0
    n = (len(self.val["ids"]) // bs) * bs or len(self.val["ids"])
    for i in range(0, n, bs):
      batch = {k: self.val[k][i : i + bs] for k in keys + ["ids", "mask"]}
      flow, s, c = self._val_loss(
          params, batch, jax.random.PRNGKey(i), self.frozen, self.stats
      )
      total += float(flow) * len(batch["ids"])
      bucket_sum = bucket_sum + np.asarray(s)
      bucket_count = bucket_count + np.asarray(c)
    out = {"val/flow": total / n}
    for b, (s, c) in enumerate(zip(bucket_sum, bucket_count)):
      if c:  # A small val split can leave a bucket empty.
        out[f"val/flow_t{b}"] = float(s / c)
    if self.config.objective == "crossflow":  # The noise path has no z_text.
      out.update(self.z_text(params))
    if self.mosaic.enabled:
      out.update(
          self.mosaic(
              self.images_for(params, self.mosaic.ids, self.mosaic.mask)
          )
      )
    if self.fd.enabled:
      # The CLIP score rides on the FD sample: its images, their captions.
      out.update(
          self.fd(
              lambda ids, mask: self.images_for(params, ids, mask), self.clip
          )
      )
    elif self.clip is not None:  # No FD: the grid's prompts.
      out["val/clip_score"] = self.clip(self.images(params), self.prompts)
      out["val/clip_num"] = float(len(self.prompts))
    logging.info(
        "validation%s: %s",
        f" at step {step}" if step else "",
        ", ".join(f"{k}={v:.4f}" for k, v in out.items()),
    )
    if step is not None:
      if self.writer is not None:
        self.writer.write_scalars(step, out)
      if jax.process_index() == 0:
        runfiles.append_metrics(self.workdir, {"step": step, **out})
    return out

  def z_text(self, params) -> dict[str, float]:
    """The z_text measures of the val captions against their own images
    (ztext.py says what each means)."""
    v, bs = self.val, self.config.eval.batch_size
    mus = []
    for i in range(0, len(v["ids"]), bs):
      mus.append(
          np.asarray(
              self._posterior_mean(
                  params,
                  self.frozen.get("text"),
                  v["ids"][i : i + bs],
                  v["mask"][i : i + bs],
                  v["text_tokens"][i : i + bs] if "text_tokens" in v else None,
              )
          )
      )
    out = ztext.z_text_measures(
        self._latent_side, np.concatenate(mus), v["image"]
    )
    return {f"val/{k}": v for k, v in out.items()}


def mosaic_reference(
    config, data, latent_side: int, tokenizer, num: int | None = None
) -> blockiness.Reference | None:
  """The first `num` (default eval.reference_num) training images' own
  blockiness and hf, which samples are judged against; None when the token
  grid has no lines to measure across."""
  period = blockiness.token_period(
      config.data.image_size, latent_side, config.flow.patch_size
  )
  if not blockiness.fits(period, config.data.image_size):
    return None
  num_real = min(num or config.eval.reference_num, data.split_size("train"))
  real = pipeline.load_split(
      data, "train", num_real, tokenizer=tokenizer, max_len=config.data.max_len
  )["image"]
  return blockiness.Reference.of(real, period)


class _MosaicMeasure:
  """val/blockiness and val/hf of images drawn for the first
  `eval.image_num` val captions, against `eval.reference_num` train images."""

  def __init__(self, config, data, parts, tokenizer, val):
    n = min(config.eval.image_num, len(val["ids"]) if val is not None else 0)
    self.enabled = n > 0
    if not self.enabled:
      return
    self.reference = mosaic_reference(
        config, data, parts.latent_shape[0], tokenizer
    )
    if self.reference is None:
      logging.info(
          "no mosaic measures: the token grid has no lines to measure across"
      )
      self.enabled = False
      return
    self.ids, self.mask = val["ids"][:n], val["mask"][:n]

  def __call__(self, images: np.ndarray) -> dict[str, float]:
    out = self.reference.score(np.clip(images, 0.0, 1.0))
    return {f"val/{k}": v for k, v in out.items()}


def _posterior_mean_fn(parts):
  def mean(params, frozen_text, ids, mask, tokens):
    mu, _ = generator_lib.text_posterior(
        parts.model,
        parts.text.frozen,
        params,
        frozen_text,
        ids,
        mask,
        tokens=tokens,
    )
    return mu.astype(jnp.float32)

  return mean


def _val_loss_fn(config, parts):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.time.sampler = dict(kind="uniform", t_min=0.0, t_max=1.0)
    c.loss.cfg_null_prob = 0.0
  loss = objectives.get(c.objective).make_loss(
      c, parts.model, parts.autoencoder, parts.text.frozen
  )

  def val(params, batch, rng, frozen, stats):
    _, aux = loss(params, batch, rng, jnp.int32(0), frozen, stats)
    return aux["flow_raw"], aux["flow_bucket_sum"], aux["flow_bucket_count"]

  return val


# OpenAI CLIP's preprocessing, used when the folder has no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
  """CLIP score of images against their prompts: mean over pairs of
  max(100 cos(image, text), 0), as torchmetrics' CLIPScore, with a local
  CLIP folder or hub id (`eval.clip_model`: Flax msgpack or PyTorch
  safetensors)."""

  BATCH = 32  # Pairs per CLIP call.

  def __init__(self, path: str):
    import json as json_lib
    import transformers
    from txt2img_jax.models import text_encoder_weights as weights_lib

    path = weights_lib.model_folder(path, "eval.clip_model")
    try:
      config = transformers.CLIPConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise FileNotFoundError(
          f"eval.clip_model={path!r}: not a CLIP folder " f"({e})"
      ) from None
    if weights_lib.has_flax(path):
      model, params = transformers.FlaxCLIPModel.from_pretrained(
          path, _do_init=False
      )
    else:
      model = transformers.FlaxCLIPModel(config, _do_init=False)
      params, _ = weights_lib.load_safetensors(path, model.params_shape_tree)
      # Its shape tree says (1,), the module a scalar; the score never uses it.
      params["logit_scale"] = params["logit_scale"].reshape(())
    self.params = params
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    self.max_len = config.text_config.max_position_embeddings
    self.size = config.vision_config.image_size
    mean, std = _CLIP_MEAN, _CLIP_STD
    pre = paths.join(path, "preprocessor_config.json")
    if paths.exists(pre):
      d = json_lib.loads(paths.read_text(pre))
      mean, std = d.get("image_mean", mean), d.get("image_std", std)
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def features(params, images, ids, mask):
      x = jax.image.resize(
          images, (images.shape[0], self.size, self.size, 3), "bicubic"
      )
      x = ((jnp.clip(x, 0, 1) - mean) / std).transpose(0, 3, 1, 2)
      img = model.get_image_features(pixel_values=x, params=params)
      txt = model.get_text_features(
          input_ids=ids, attention_mask=mask, params=params
      )
      return img, txt

    self._features = jax.jit(features)

  def scores(self, images: np.ndarray, prompts) -> np.ndarray:
    """max(100 cos, 0) per (image, prompt) pair, in fixed batches of
    BATCH (the last one padded) so CLIP compiles once."""
    prompts = list(prompts)
    ids, mask = tokenizer_lib.tokenize(self.tokenizer, prompts, self.max_len)
    images = np.asarray(images, np.float32)
    out = []
    for i in range(0, len(prompts), self.BATCH):
      b_img, b_ids, b_mask = (
          a[i : i + self.BATCH] for a in (images, ids, mask)
      )
      pad = self.BATCH - len(b_ids)
      if pad:
        b_img, b_ids, b_mask = (
            np.concatenate([a, np.repeat(a[-1:], pad, 0)])
            for a in (b_img, b_ids, b_mask)
        )
      img, txt = self._features(self.params, b_img, b_ids, b_mask)
      img = np.asarray(img, np.float64)[: self.BATCH - pad]
      txt = np.asarray(txt, np.float64)[: self.BATCH - pad]
      cos = (img * txt).sum(-1) / (
          np.linalg.norm(img, axis=-1) * np.linalg.norm(txt, axis=-1) + 1e-12
      )
      out.append(np.maximum(100.0 * cos, 0.0))
    return np.concatenate(out)

  def __call__(self, images: np.ndarray, prompts) -> float:
    return float(self.scores(images, prompts).mean())
