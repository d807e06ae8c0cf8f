"""The host allocator on CPU backends: reuse the step's memory, do not remap it.

XLA's CPU runtime allocates the train step's buffers afresh on every
execution (416 MB of temporaries for the default recipe). By default jax
runs each computation on a worker thread, whose glibc malloc arena serves
blocks that large with mmap and gives them back with munmap, so every step
the kernel maps and zeroes ~480 MB of new pages: ~116,000 page faults and
~175 ms of system CPU time per step of the default recipe, a quarter of the
step's CPU time on a 2-core machine.

Two settings remove that: jax runs single-device computations on the
calling thread (`jax_cpu_enable_async_dispatch=False`), whose allocations
come from glibc's main arena, and the main arena keeps what is freed (no
mmap for large blocks, no trimming), so the next step reuses the same pages.
Measured in docs/performance.md ("Host memory"): the default recipe's step 18-22%
faster, compilation unchanged. The cost: the process keeps its peak host
memory until it exits, and the Python thread waits for each computation
(the input pipeline's own threads still prepare batches ahead).

The step's inputs must be ready when it is called (`inputs_ready`): an
input still being copied sends the computation to a worker thread anyway.

The settings must come before the first computation (jax reads its option
when it creates the CPU backend), so the package's __init__ calls
keep_freed_memory() first thing. It applies on Linux with glibc when jax
will run on the CPU; it does nothing where an accelerator plugin is installed (the step's buffers live on
the device there), where the user tunes glibc's malloc through the
environment, or when TXT2IMG_MALLOC=system. TXT2IMG_MALLOC=reuse applies it
whatever the installed backends.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys

import jax

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

ENV = "TXT2IMG_MALLOC"
CHOICES = ("auto", "reuse", "system")
# Packages that give jax a GPU or TPU backend.
_ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "libtpu",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
)
# The user's own glibc malloc settings win.
_GLIBC_ENV = (
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
)

# What keep_freed_memory did in this process ("reuse" or "off (why)").
applied: str = "not tried"


def _cpu_only() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not any(
      importlib.util.find_spec(p) is not None for p in _ACCELERATOR_PLUGINS
  )


def decide(
    environ=os.environ, platform: str = sys.platform, cpu_only=_cpu_only
) -> str:
  """'reuse', or 'off (why)': what keep_freed_memory will do here."""
  choice = environ.get(ENV, "auto").strip().lower() or "auto"
  if choice not in CHOICES:
    raise ValueError(
        f"{ENV}={environ[ENV]!r}: expected one of " f"{', '.join(CHOICES)}"
    )
  if choice == "system":
    return f"off ({ENV}=system)"
  if not platform.startswith("linux"):
    return f"off (not Linux: {platform})"
  set_by_user = [k for k in _GLIBC_ENV if k in environ]
  if set_by_user:
    return f"off (the environment sets {set_by_user[0]})"
  if choice == "auto" and not cpu_only():
    return f"off (an accelerator backend is installed; {ENV}=reuse forces it)"
  return "reuse"


def _mallopt():
  name = ctypes.util.find_library("c")
  return getattr(ctypes.CDLL(name), "mallopt", None) if name else None


def keep_freed_memory() -> str:
  """Applies the settings where decide() says so; returns what it did."""
  global applied
  try:
    applied = decide()
  except ValueError as e:  # A typo must not stop every command at import.
    applied = f"off ({e})"
    sys.stderr.write(f"warning: {e}; the system's allocator is used\n")
  if applied != "reuse":
    return applied
  mallopt = _mallopt()
  # mallopt returns 1 on success; its int -1 becomes SIZE_MAX: never trim.
  if mallopt is None or not (
      mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
  ):
    applied = "off (no glibc mallopt)"
    return applied
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  return applied


def inputs_ready(tree):
  """Waits for `tree`'s host-to-device copies where the settings apply.

  A computation runs on the calling thread only if its inputs are ready;
  one whose batch is still being copied is queued to a worker thread when
  the copy ends, and there glibc maps its large blocks afresh whatever
  mallopt says (a thread arena's last resort). On CPU the copy is a memcpy
  of the batch; elsewhere this returns at once.
  """
  if applied == "reuse":
    jax.block_until_ready(tree)
  return tree
