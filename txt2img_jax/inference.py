"""Rebuild a trained run from its workdir alone: config, text side, model,
latent statistics and the EMA parameters of its latest checkpoint."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from txt2img_jax import assets
from txt2img_jax import checkpointing
from txt2img_jax import train
from txt2img_jax.models import autoencoder as ae_lib


@dataclasses.dataclass
class Run:
  workdir: str
  config: Any
  step: int
  text: assets.TextSide
  builder: Any
  generate: Any
  ema_params: Any
  frozen: Any
  stats: ae_lib.LatentStats
  model: Any = None        # The CrossFlow module (for its other methods).
  autoencoder: Any = None


def load_run(workdir: str, with_data: bool = True) -> Run:
  workdir = os.path.abspath(workdir)
  config = assets.load_config(workdir)
  latent_shape = train.validate_config(config)
  text = assets.load_text(config, workdir)
  model = train.build_model(config, latent_shape, text.vocab_size,
                            text.frozen is None)
  raw, step = checkpointing.load_raw(workdir)
  autoencoder = ae_lib.PixelAutoencoder(config.autoencoder.factor)
  generate = train.make_generate_fn(config, model, autoencoder, text.frozen)
  builder = assets.prepare_data(config) if with_data else None
  return Run(workdir=workdir, config=config, step=step, text=text,
             builder=builder, generate=generate,
             ema_params=jax.device_put(raw["ema_params"]),
             frozen=text.frozen_params, stats=assets.load_latent_stats(workdir),
             model=model, autoencoder=autoencoder)
