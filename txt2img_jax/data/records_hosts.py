"""The hosts that prepare records together: who they are, how they meet,
and whether they share the output dir.

`records_prepare.prepare(..., hosts=Hosts(...))` takes them; the trainer
builds them from JAX's multi-process runtime (`train/run_data.prepare_data`),
the tests from threads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from txt2img_jax.data import records_write
from txt2img_jax.utils import paths

HOSTS_TOKEN = ".hosts_token"


def _nothing(name: str) -> None:
  del name


@dataclasses.dataclass(frozen=True)
class Hosts:
  """The processes that prepare together and how they meet.

  `sync(name)` returns once every host has called it with that name;
  `gather(x)` gives every host the list of all hosts' ints (in host order)
  and is a meeting point too. One host (the default) needs neither.
  """

  index: int = 0
  count: int = 1
  sync: Callable[[str], None] = _nothing
  gather: Callable[[int], list[int]] | None = None

  def __post_init__(self):
    if not 0 <= self.index < self.count:
      raise ValueError(f"host index {self.index} is not in [0, {self.count}).")
    if self.count > 1 and self.gather is None:
      raise ValueError("several hosts need a `gather` to agree on the dir.")


ONE_HOST = Hosts()


def shared_dir(out_dir: str, hosts: Hosts) -> bool:
  """Whether every host sees the same out_dir: host 0 writes a random token
  there and tells the others; each reads what its disk holds. (A bucket is
  shared by every host that names it.)"""
  token = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
  path = paths.join(out_dir, HOSTS_TOKEN)
  if hosts.index == 0:
    records_write.atomic_write_json(path, token)
  told = hosts.gather(token if hosts.index == 0 else 0)[0]
  try:
    seen = json.loads(paths.read_text(path))
  except (OSError, ValueError):
    seen = None
  shared = hosts.gather(int(seen == told))
  return all(shared)
