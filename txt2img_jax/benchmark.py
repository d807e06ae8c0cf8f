"""Prints the structure benchmark's calibration (the tables of
docs/benchmark.md): at 32 and 64 px, the perturbations, and the scoring speed.

  python -m txt2img_jax.benchmark
"""

from __future__ import annotations

import time

from txt2img_jax.data import shapes
from txt2img_jax.evaluation import benchmark


def main() -> None:
  cal = benchmark.calibrate()
  print(benchmark.calibration_table(cal))
  print("\n64 px, 100 examples:")
  print(
      benchmark.calibration_table(benchmark.calibrate(num=100, image_size=64))
  )
  print("\nperturbations of 300 renders:")
  print(
      benchmark.format_table(
          benchmark.summarize_splits(benchmark.perturbations())
      )
  )
  exs = [shapes.example(1, "test", i) for i in range(1000)]
  images, desc = benchmark.stack_examples(exs)
  desc10 = {k: v[:10] for k, v in desc.items()}
  benchmark.score(images[:10], desc10)  # Warm up.
  t0 = time.perf_counter()
  benchmark.score(images, desc)
  print(f"score(): 1000 images of 32x32 in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
  main()
