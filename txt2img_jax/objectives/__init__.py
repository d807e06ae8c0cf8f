"""Training objectives, by `config.objective`.

An objective module provides
  make_loss(config, model, autoencoder, text_frozen, perceptual=None)
      -> loss(params, batch, rng, step, frozen, stats) -> (total, aux)
  LOSS_TERMS: the names of its loss terms: aux holds `loss_<name>` (weighted,
      they add up to `loss`) and the raw values the reporter smooths.
The generic step around it (gradients, clipping, the non-finite guard, EMA,
norms, learning rates) is `step.make_train_step`; nothing there knows the
terms of any objective.
"""

from txt2img_jax.objectives import crossflow

REGISTRY = {"crossflow": crossflow}


def get(name: str):
  if name not in REGISTRY:
    raise ValueError(f"objective={name!r}: expected one of {sorted(REGISTRY)}")
  return REGISTRY[name]
