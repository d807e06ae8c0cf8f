"""What every command builds from a config (`build_parts`: text side,
latent space, model), and a trained run rebuilt from its workdir
(`load_run`): training, sampling, evaluation, the health checks and `perf`
build their pieces here, so they cannot drift apart. Nothing here imports
the training loop or the evaluators."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax

from txt2img_jax import objectives
from txt2img_jax.models import autoencoder as ae_lib
from txt2img_jax.models import latents
from txt2img_jax.utils import hub
from txt2img_jax.utils import paths
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpoint_trees
from txt2img_jax.train import latent_stats
from txt2img_jax.train import restore
from txt2img_jax.train import run_config
from txt2img_jax.train import run_data
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import text_side
from txt2img_jax.train import validate


def build_model(config, latent_shape, vocab_size: int, embedded: bool):
  return objectives.get(config.objective).build_model(
      config, latent_shape, vocab_size, embedded
  )


def make_generate_fn(config, model, autoencoder, text_frozen):
  """generate(params, frozen, stats, ids, mask, rng, *, num_steps, method,
  cfg_scale, use_mean) -> images in [0, 1]: the objective's sampler."""
  return objectives.get(config.objective).make_generate(
      config, model, autoencoder, text_frozen
  )


@dataclasses.dataclass
class Parts:
  """The pieces of a run that do not depend on its weights."""

  config: Any
  latent_shape: tuple[int, int, int]
  text: text_side.TextSide
  autoencoder: Any  # A latent space (txt2img_jax/latents.py).
  model: Any  # The CrossFlow module.

  @property
  def frozen(self) -> dict:
    """The frozen weights every jitted function takes as an argument."""
    return {"text": self.text.frozen_params, "latent": self.autoencoder.params}


def build_parts(
    config,
    workdir: str | None = None,
    data=None,
    autoencoder=None,
    latent_shape=None,
) -> Parts:
  """`data` gives the embedded text encoder its vocabulary (else the run's
  saved one); `autoencoder`, when already built, is reused. The config is
  validated here unless the caller did (and passes its `latent_shape`)."""
  validate.use_prng_impl(config)
  if latent_shape is None:
    latent_shape = validate.validate_config(config)
  autoencoder = autoencoder or latents.build(config)
  return _assemble(config, workdir, data, autoencoder, latent_shape)


def _assemble(config, workdir, data, autoencoder, latent_shape) -> Parts:
  """The text side (checked against the data's cached text features) and
  the objective's model, over a built latent space."""
  text = text_side.load(config, workdir, data)
  text_side.check_cache(config, data, text)
  model = build_model(
      config, latent_shape, text.vocab_size, text.frozen is None
  )
  return Parts(config, latent_shape, text, autoencoder, model)


def build_for_training(config, workdir: str, latent_shape):
  """(parts, data, latent statistics, generate) of a training run whose
  config `validate_config` has checked: the latent space, the data prepared
  on every host, the parts, the statistics and the objective's sampler."""
  autoencoder = latents.build(config)
  data = run_data.prepare_data(config, autoencoder)
  parts = _assemble(config, workdir, data, autoencoder, latent_shape)
  stats = latent_stats.compute_or_load(config, workdir, data, autoencoder)
  generate = make_generate_fn(
      config, parts.model, autoencoder, parts.text.frozen
  )
  return parts, data, stats, generate


@dataclasses.dataclass
class Run:
  """A trained run rebuilt from its workdir: sample.py, evaluate.py, the
  health checks and the experiments start here."""

  workdir: str
  config: Any
  step: int
  parts: Parts
  builder: Any
  generate: Any
  ema_params: Any
  stats: ae_lib.LatentStats

  @property
  def text(self) -> text_side.TextSide:
    return self.parts.text

  @property
  def model(self):
    return self.parts.model

  @property
  def autoencoder(self):
    return self.parts.autoencoder

  @property
  def frozen(self) -> dict:
    return self.parts.frozen

  def images(self, ids, mask, **overrides):
    """Images (EMA params) for tokenised captions, in eval.batch_size
    batches, with the run's sampler settings unless overridden
    (`batched.generate_images`'s seed, num_steps, use_mean, ...)."""
    from txt2img_jax.evaluation import batched

    return batched.generate_images(
        self.generate,
        self.ema_params,
        self.frozen,
        self.stats,
        self.config.sample,
        ids,
        mask,
        self.config.eval.batch_size,
        **overrides,
    )


def load_run(
    workdir: str, with_data: bool = True, allow_download: bool = False
) -> Run:
  """The run in `workdir`, checked as a resume checks it: a checkpoint
  that does not fit the run's config.json / vocab.json is one line.
  Hub names in its config resolve from the local cache only, unless
  `allow_download` (a received run dir must not reach the network)."""
  workdir = paths.abspath(workdir)  # A local path or a bucket URL.
  config = run_config.load(workdir)
  with contextlib.nullcontext() if allow_download else hub.local_files_only():
    parts = build_parts(config, workdir)
  raw, step = checkpoint_files.load_raw(workdir)
  raw = restore.dit_layout(config)(raw)
  want = jax.eval_shape(
      lambda: nn.unbox(
          state_lib.init_variables(
              parts.model,
              config,
              parts.latent_shape,
              parts.text.width,
              jax.random.PRNGKey(0),
          )
      )
  )
  detail = checkpoint_trees.structure_difference(want, raw["ema_params"])
  if detail is not None:
    raise ValueError(
        f"{workdir}: checkpoint step {step} holds another model than the "
        f"run's {run_config.CONFIG_FILE} and {text_side.VOCAB_FILE} describe "
        f"({detail}); the run's files do not belong together - copy the "
        "workdir whole"
    )
  generate = make_generate_fn(
      config, parts.model, parts.autoencoder, parts.text.frozen
  )
  builder = (
      run_data.prepare_data(config, parts.autoencoder) if with_data else None
  )
  return Run(
      workdir=workdir,
      config=config,
      step=step,
      parts=parts,
      builder=builder,
      generate=generate,
      ema_params=jax.device_put(raw["ema_params"]),
      stats=latent_stats.load(workdir),
  )


def initial_params(run: "Run"):
  """The parameters `run` started from at step 0 (its seed's init)."""
  validate.use_prng_impl(run.config)
  return nn.unbox(
      state_lib.init_variables(
          run.model,
          run.config,
          run.parts.latent_shape,
          run.text.width,
          state_lib.init_keys(run.config)[0],
      )
  )
