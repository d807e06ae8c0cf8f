"""Training objectives, by `config.objective`: one module and one registry
line each. Every objective module provides (`Objective` below)

  make_loss(config, model, autoencoder, text_frozen, perceptual=None)
      -> loss(params, batch, rng, step, frozen, stats) -> (total, aux)
  LOSS_TERMS: the names of its loss terms: aux holds `loss_<name>` (weighted,
      they add up to `loss`) and the raw values the reporter smooths.
  EMA_KEYS: the terms the reporter smooths.
  build_model(config, latent_shape, vocab_size, embedded) -> a linen module
      whose __call__ takes (ids, mask, tokens, x1, time_input, indicator);
  make_generate(config, model, autoencoder, text_frozen) -> the jitted
      generate(params, frozen, stats, ids, mask, rng, *, num_steps, method,
      cfg_scale, use_mean) -> images in [0, 1].
The generic step around it (gradients, clipping, the non-finite guard, EMA,
norms, learning rates) is `train/step.make_train_step`; nothing there knows
the terms of any objective.
"""

from typing import Any, Callable, Protocol

from txt2img_jax.objectives import crossflow
from txt2img_jax.objectives import noise_flow


class Objective(Protocol):
  LOSS_TERMS: tuple[str, ...]
  EMA_KEYS: tuple[str, ...]

  def make_loss(
      self, config, model, autoencoder, text_frozen, perceptual=None
  ) -> Callable:
    ...

  def build_model(
      self, config, latent_shape, vocab_size: int, embedded: bool
  ) -> Any:
    ...

  def make_generate(self, config, model, autoencoder, text_frozen) -> Callable:
    ...


REGISTRY: dict[str, Objective] = {
    "crossflow": crossflow,
    "noise_flow": noise_flow,
}


def get(name: str) -> Objective:
  if name not in REGISTRY:
    raise ValueError(f"objective={name!r}: expected one of {sorted(REGISTRY)}")
  return REGISTRY[name]
