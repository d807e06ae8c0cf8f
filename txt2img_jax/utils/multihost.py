"""What a run on several processes (hosts) needs besides the sharded step:
joining the cluster, checking that every host got the same config, and
letting one host prepare shared files before the others read them.

On one process every function here is a no-op, so single-host code calls
them unconditionally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Iterator

from absl import logging
import jax
import numpy as np


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """jax.distributed.initialize; unset arguments are found by JAX (Cloud
  TPU metadata, Slurm or Open MPI environment)."""
  kw = {
      k: v
      for k, v in (
          ("coordinator_address", coordinator_address),
          ("num_processes", num_processes),
          ("process_id", process_id),
      )
      if v is not None
  }
  # CPU devices of several processes (local rehearsals, tests) need a
  # collectives backend; gloo is JAX's default today, named here so that a
  # change of default cannot turn a rehearsal into a hang. Accelerators
  # ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)


def config_digest(config) -> str:
  """A short hash of the config as JSON (key order fixed)."""
  text = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_config(config) -> None:
  """Raises on every host when the hosts' configs differ.

  A host with another config (a stale checkout, a flag missing from one
  worker's command) would otherwise compile another program and hang or
  diverge silently.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  digest = config_digest(config)
  # 16 hex digits as two uint32 words: process_allgather moves arrays only.
  words = np.array([int(digest[:8], 16), int(digest[8:], 16)], np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(words))
  digests = [f"{int(a):08x}{int(b):08x}" for a, b in everyone.reshape(-1, 2)]
  differ = [i for i, d in enumerate(digests) if d != digests[0]]
  if differ:
    raise ValueError(
        f"the {len(digests)} processes see different configs: process(es) "
        f"{differ} differ from process 0 (config hashes {digests}); give "
        "every host the same code, config file and --config overrides"
    )
  logging.info("config hash %s on all %d processes", digest, len(digests))


def sync(name: str) -> None:
  """Every process waits here until all have arrived."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def gather_int(x: int) -> list[int]:
  """Every process's int, in process order (a meeting point too)."""
  if jax.process_count() == 1:
    return [int(x)]
  from jax.experimental import multihost_utils

  out = multihost_utils.process_allgather(np.array([x], np.int32))
  return [int(v) for v in np.asarray(out).reshape(-1)]


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Process 0 runs the block first, then the others.

  For files the hosts may share (a data dir on one disk): process 0 prepares
  them alone, the others then find them ready; on hosts with their own disks
  each still prepares its own copy.
  """
  if jax.process_index() != 0:
    sync(f"{name}_main_done")
  yield
  if jax.process_index() == 0:
    sync(f"{name}_main_done")
