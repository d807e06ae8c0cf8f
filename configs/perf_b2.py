"""DiT-B/2 scale: the throughput preset (issue 14's reference measurement).

The recommended recipe (restart.py) scaled up: 64 px images through the
space-to-depth autoencoder with factor 2 (a 32x32x12 latent), patch 2 (256
tokens), a DiT of width 768, depth 12, 12 heads (~130 M parameters), a
512-wide text encoder of 4 blocks, the token-transformer head at 512 x 2,
batch 256, bfloat16 compute (float32 parameters and optimizer state), jax's
rbg random-bit generator.

  python -m txt2img_jax.perf --config=configs/perf_b2.py [--steps=0]
  (:tiny runs the same code path, bf16 and a scanned DiT, at a test's size)
  python -m txt2img_jax.main --config=configs/perf_b2.py --workdir=workdirs/b2

It trains on the embedded captioned shapes rendered at 64 px; on a CPU use
perf --steps=0 (compile and FLOPs only): a step takes minutes there.
Every field is documented in base.py.
"""

import ml_collections

from configs import restart


def scale(
    c: ml_collections.ConfigDict, width: int, depth: int, num_heads: int
) -> None:
  """The shared DiT-*/2 setting; only the flow network's size differs."""
  c.dtype = "bfloat16"
  c.batch_size = 256
  c.data.image_size = 64
  c.autoencoder.factor = 2  # 64x64x3 -> 32x32x12.
  c.flow.patch_size = 2  # 16x16 patches of 2x2 -> 256 tokens.
  c.flow.width = width
  c.flow.depth = depth
  c.flow.num_heads = num_heads
  c.flow.scan = True  # One compiled block whatever the depth.
  c.prng_impl = "rbg"  # Compiles faster than threefry; the TPU's own generator.
  c.text_encoder.update(width=512, depth=4, num_heads=8)
  c.head.kind = "token_transformer"
  c.head.token_transformer.update(width=512, depth=2, num_heads=8)


def tiny(c: ml_collections.ConfigDict) -> None:
  """The preset's code path (bf16, scanned DiT, 64 px) at a test's size."""
  restart.base.shrink(c)
  c.batch_size = 8
  c.flow.update(width=32, depth=2, num_heads=2)
  c.text_encoder.update(width=32, depth=1, num_heads=2)
  c.head.token_transformer.update(width=32, depth=1, num_heads=2)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = restart.get_config()
  c.name = "perf_b2"
  scale(c, width=768, depth=12, num_heads=12)
  if variant == "tiny":
    tiny(c)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny'")
  return c
