"""DiT-XL/2 scale: perf_b2.py with the flow network of DiT-XL/2.

Width 1152, depth 28, 16 heads (~675 M flow parameters); everything else as
in perf_b2.py (64 px, 32x32x12 latent, patch 2, batch 256, bfloat16).

  python -m txt2img_jax.perf --config=configs/perf_xl2.py [--steps=0]

Every field is documented in base.py.
"""

import ml_collections

from configs import perf_b2


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = perf_b2.get_config()
  c.name = "perf_xl2"
  perf_b2.scale(c, width=1152, depth=28, num_heads=16)
  if variant == "tiny":
    perf_b2.tiny(c)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny'")
  return c
