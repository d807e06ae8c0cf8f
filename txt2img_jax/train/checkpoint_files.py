"""Checkpoints on disk, found and read without a run: which step dirs orbax
committed, the newest complete step of a workdir, and a checkpoint's arrays
on the host whatever model saved them (for `init_from`, `sample`,
`evaluate`).

A workdir is a local path or a bucket URL (`gs://...`): these checks go
through `utils/paths.py` on the URL, and orbax is handed `paths.native` of
it (it writes and reads buckets itself).
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from txt2img_jax.utils import paths

# What orbax writes last when it commits a step (after every array and the
# tree's _METADATA): a step dir without these is an interrupted save.
_COMMIT_FILES = (("_CHECKPOINT_METADATA",), ("default", "_METADATA"))
# On a bucket orbax writes into the step dir itself (no rename to commit),
# where _CHECKPOINT_METADATA is there from the start: the commit is this file,
# written last (orbax's own test for gs://; its local saves write it too).
_BUCKET_COMMIT_FILE = ("commit_success.txt",)


def workdir_path(workdir: str) -> str:
  """A workdir as every host names it: a local path made absolute (`~`
  expanded), a bucket URL (gs://, s3://, az://) kept as a URL. Any other
  scheme is one line (ValueError)."""
  try:
    return paths.abspath(workdir)
  except ValueError as e:
    reason = str(e).removeprefix(f"{workdir}: ")
    raise ValueError(f"--workdir={workdir}: {reason}") from None


class NoCheckpointError(FileNotFoundError):
  """No readable checkpoint where one was expected."""


def is_complete(step_dir: str) -> bool:
  """A committed step: orbax's commit files present and not empty.

  Cheap (no array is read): a truncated array file passes, and is caught
  when the restore fails.
  """
  commit = _COMMIT_FILES
  if paths.is_remote(step_dir):
    commit += (_BUCKET_COMMIT_FILE,)
  return all(
      paths.isfile(p) and paths.getsize(p) > 0
      for p in (paths.join(step_dir, *f) for f in commit)
  )


def step_dirs(directory: str) -> tuple[list[int], list[int]]:
  """(complete steps, incomplete steps) of a checkpoints dir, ascending."""
  if not paths.isdir(directory):
    return [], []
  steps = sorted(
      int(d)
      for d in paths.listdir(directory)
      if d.isdigit() and paths.isdir(paths.join(directory, d))
  )
  good = [s for s in steps if is_complete(paths.join(directory, str(s)))]
  return good, [s for s in steps if s not in good]


def short_error(e: BaseException, n: int = 200) -> str:
  """Orbax errors can be 100 KB long (a whole tree); a log line needs the
  gist."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= n else text[:n] + "..."


def _candidates(path: str) -> tuple[str, list[int]]:
  """(checkpoints dir, its complete steps, newest first) for `path`."""
  path = paths.abspath(path)
  for directory in (paths.join(path, "checkpoints"), path):
    good, bad = step_dirs(directory)
    if good or bad:
      newer_bad = [s for s in bad if not good or s > good[-1]]
      if newer_bad:
        logging.warning(
            "%s: skipping step dir(s) %s, not complete "
            "checkpoints (empty, or a save that was cut off)",
            directory,
            newer_bad,
        )
      if good:
        return directory, good[::-1]
      raise NoCheckpointError(
          f"no complete checkpoint in {directory}: step dir(s) {bad} are "
          "empty or were cut off in mid-save"
      )
  parent, leaf = paths.dirname(path), paths.basename(path)
  if leaf.isdigit() and paths.isdir(path):
    if is_complete(path):
      return parent, [int(leaf)]
    raise NoCheckpointError(
        f"{path} is not a complete checkpoint (empty, or its save was cut "
        "off); pass the workdir to use its newest complete one"
    )
  raise NoCheckpointError(
      f"no checkpoint found at {path!r}: expected a workdir with "
      "checkpoints/<step>/, a checkpoints dir, or a step dir"
  )


def resolve_checkpoint(path: str) -> tuple[str, int]:
  """A workdir, its checkpoints dir or one step dir -> (checkpoints dir, step).

  The newest complete step; empty or half-saved step dirs are skipped.
  """
  directory, steps = _candidates(path)
  return directory, steps[0]


def load_raw(path: str) -> tuple[dict, int]:
  """The saved state as nested dicts of host arrays, whatever its model,
  and its step (`load_raw_from`)."""
  raw, step, _ = load_raw_from(path)
  return raw, step


def load_raw_from(path: str) -> tuple[dict, int, str]:
  """(state, step, checkpoints dir): the saved state as nested dicts of host
  arrays, whatever its model, from a workdir, its checkpoints dir or a step
  dir.

  Falls back to an older complete step, with a warning, when the newest
  does not restore (a truncated array file).
  """
  directory, steps = _candidates(path)
  errors = []
  for step in steps:
    try:
      raw = _restore_to_host(
          paths.native(paths.join(directory, str(step), "default"))
      )
    except Exception as e:  # Orbax and tensorstore raise many kinds.
      errors.append(f"step {step}: {short_error(e)}")
      logging.warning(
          "%s: checkpoint step %d does not restore (%s); trying "
          "an older one",
          directory,
          step,
          short_error(e),
      )
      continue
    return raw, step, directory
  raise NoCheckpointError(
      f"no checkpoint in {directory} restores: {'; '.join(errors)}"
  )


def _restore_to_host(path: str) -> Any:
  """Every array as numpy: a checkpoint saved on other devices or hosts
  (orbax would otherwise restore onto the saved topology, and refuse)."""
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=args)
