"""Training objectives, by `config.objective`.

An objective module provides
  make_loss(config, model, autoencoder, text_frozen, perceptual=None)
      -> loss(params, batch, rng, step, frozen, stats) -> (total, aux)
  LOSS_TERMS: the names of its loss terms: aux holds `loss_<name>` (weighted,
      they add up to `loss`) and the raw values the reporter smooths.
and, where its model or sampler differ from CrossFlow's (`train/run.py` uses
CrossFlow's when they are absent),
  build_model(config, latent_shape, vocab_size, embedded) -> a linen module
      whose __call__ takes (ids, mask, tokens, x1, time_input, indicator);
  make_generate(config, model, autoencoder, text_frozen) -> the jitted
      sampler of `train/sampling.make_generate_fn`.
The generic step around it (gradients, clipping, the non-finite guard, EMA,
norms, learning rates) is `step.make_train_step`; nothing there knows the
terms of any objective.
"""

from txt2img_jax.objectives import crossflow
from txt2img_jax.objectives import noise_flow

REGISTRY = {"crossflow": crossflow, "noise_flow": noise_flow}


def get(name: str):
  if name not in REGISTRY:
    raise ValueError(f"objective={name!r}: expected one of {sorted(REGISTRY)}")
  return REGISTRY[name]
