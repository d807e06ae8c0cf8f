"""txt2img_jax: noise-free cross-modal flow matching (CrossFlow) in JAX/Flax."""

import os

from txt2img_jax.utils import hostmem

# Before any computation or large allocation: see hostmem (a CPU train step
# 18-22% faster).
hostmem.keep_freed_memory()

# TensorFlow (imported by TFDS and CLU) logs C++ info lines at import that say
# nothing about this program; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# transformers imports PyTorch whenever it is installed (it is a test-only
# dependency here, for the KL-VAE parity test); nothing in this package uses
# it, and importing it costs every command ~2 s.
os.environ.setdefault("USE_TORCH", "0")
