"""What FD/KID cost per evaluation: seconds per 1,000 images of each
feature network, beside this machine's matmul rate.

  python -m experiments.fid_cost [--images=256] [--image_size=64] \
      [--sizes=224,112] [--nets=alexnet,vgg16] [--out=table.md] \
      [--inception_weights=pt_inception-2015-12-05-6726825d.pth]

Times the feature network alone (`evaluation/features.py`, after a warm-up
call that compiles it) on random images of `image_size` px, and the FD/KID
arithmetic on as many 512-wide feature rows; the sampler's cost is the
run's own and not included. Prints one row per network and input size;
`--out` also writes them as a markdown table. With --inception_weights, a
row for the FID Inception too (its cost does not depend on the weights'
values: any state dict of its shapes times it).
"""

from __future__ import annotations

import time

from absl import flags
import jax.numpy as jnp
import numpy as np

from txt2img_jax import cli
from txt2img_jax.evaluation import features
from txt2img_jax.evaluation import fid
from txt2img_jax.train import throughput

_IMAGES = flags.DEFINE_integer("images", 256, "Images timed per row.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the images.")
_SIZES = flags.DEFINE_list("sizes", ["224", "112"], "Network input sides.")
_NETS = flags.DEFINE_list("nets", ["alexnet", "vgg16"], "Feature networks.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per call.")
_OUT = flags.DEFINE_string("out", "", "Also write the table here (markdown).")
_INCEPTION = flags.DEFINE_string(
    "inception_weights", "", "Time the FID Inception too, with these weights."
)


def main(argv):
  del argv
  rate = throughput.matmul_flops_per_s(jnp.float32, 2048)
  print(f"2048^3 float32 XLA matmul: {rate / 1e9:.0f} GFLOP/s")
  rng = np.random.default_rng(0)
  n = _IMAGES.value
  images = rng.random((n, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3), np.float32)
  print(f"{'network':<14} {'s / 1000 images':>16}")
  table = [
      f"2048³ float32 XLA matmul: {rate / 1e9:.0f} GFLOP/s; {n} images of "
      f"{_IMAGE_SIZE.value} px.",
      "",
      "| features | s / 1000 images |",
      "|----------|-----------------|",
  ]
  runs = [(net, int(size), "") for net in _NETS.value for size in _SIZES.value]
  if _INCEPTION.value:
    runs.append(("inception", 299, _INCEPTION.value))
  for net, size, weights in runs:
    f = features.load(net, size, weights)
    f(images[: _BATCH.value], _BATCH.value)  # Compile.
    t = time.perf_counter()
    f(images, _BATCH.value)
    dt = time.perf_counter() - t
    print(f"{f.name:<14} {1000 * dt / n:>16.1f}")
    table.append(f"| {f.name} | {1000 * dt / n:.1f} |")
  rows = rng.normal(size=(n, 512))
  t = time.perf_counter()
  m = fid.Moments().add(rows)
  fid.frechet_distance(m.mean, m.cov, m.mean, m.cov)
  fid.kid(rows, rows, num_subsets=50, subset_size=max(2, n // 2))
  print(f"FD + KID on {n} x 512 rows: {time.perf_counter() - t:.2f} s")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write("\n".join(table) + "\n")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
