"""The note's second lever alone: where on the path training spends its effort.

From base.py (the plateaued run) it changes only the time sampling and the
network's time input, so a comparison with base.py isolates this lever:
- a curriculum that starts on the structure-forming, high-signal segment
  alpha = t in [0.8, 0.98] (note: for the first 30k steps), then widens to
- uniform logSNR on [-2, 6], t = sigmoid(lambda / 2) (note: lambda ~ U[-2, 6]);
- the network sees the path's logSNR instead of the note's 4 - 8t.

Note that uniform logSNR on [-2, 6] only covers t in [0.27, 0.95]: on this
noise-free path t = 0 is the text latent where sampling starts, so the
segment [0, 0.27] is never trained. docs/recipes.md reports what that does.
Every field is documented in base.py.
"""

import ml_collections

from configs import base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base.get_config()
  c.name = "logsnr"
  c.time.sampler = ml_collections.ConfigDict(
      dict(
          kind="curriculum",
          steps=300,  # note: 30k steps.
          blend_steps=100,
          first=dict(kind="alpha_range", alpha_min=0.8, alpha_max=0.98),
          then=dict(kind="uniform_logsnr", logsnr_min=-2.0, logsnr_max=6.0),
      )
  )
  c.flow.time_input = "logsnr"
  if variant == "tiny":
    base.shrink(c)
    c.time.sampler.update(steps=2, blend_steps=2)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny'")
  return c
