"""Orbax checkpoints of the whole train state, saved and resumed by a run.

A checkpoint is the train state pytree (step, params, EMA params, optimizer
state, rng, counters). The input pipeline is a pure function of the step, so
the step alone restores the input position.

This module owns the `Checkpointer` a run saves and resumes with, and the
one-line errors of a failed write. Finding and reading checkpoints without
a run (the newest complete step, arrays whatever the model) is in
checkpoint_files.py; comparing and merging state trees by path (partial
loading) in checkpoint_trees.py.

The workdir may be a bucket URL: orbax is handed `paths.native` of the
checkpoints dir and writes it itself; our own checks of which step dirs are
complete, and the moving aside of broken ones, go through `utils/paths.py`.
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from txt2img_jax.train import checkpoint_files, checkpoint_trees
from txt2img_jax.utils import paths
from txt2img_jax.utils.errors import UserError

BROKEN_DIR = "checkpoints_broken"


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, quota, read-only)."""

  exit_at_once = True  # cli: no teardown of orbax's failed save threads.


# errno -> what the user reads; tensorstore reports them in its message
# (`... [os_error_code='28']`), Python as OSError.errno.
SPACE_MARGIN = 1.1  # A checkpoint on disk: its arrays' bytes and ~10%.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EIO: "input/output error",
}


class EvaluationError(UserError):
  """A sample grid or evaluation failed; the run's state is saved."""


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def _write_failure(e: BaseException) -> str | None:
  """What went wrong when `e` (or an error it wraps) is an OS write error."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
      what = _WRITE_ERRNOS[e.errno]
      return (
          f"{what} ({e.strerror})"
          if e.filename is None and (e.strerror and e.strerror.lower() != what)
          else what
      )
    match = re.search(r"os_error_code='(\d+)'", str(e))
    if match and int(match.group(1)) in _WRITE_ERRNOS:
      return _WRITE_ERRNOS[int(match.group(1))]
    e = e.__cause__ or e.__context__
  return None


class Checkpointer:
  """Async, keep-N checkpoints under `<workdir>/checkpoints`.

  A step dir that is not a committed checkpoint (empty, or a save cut off
  before orbax's commit files) or that fails to restore is moved to
  `<workdir>/checkpoints_broken/` with a warning, and the run resumes from
  the newest step that restores.
  """

  def __init__(
      self, workdir: str, max_to_keep: int = 3, async_save: bool = True
  ):
    self.workdir = paths.abspath(workdir)
    self.directory = paths.join(self.workdir, "checkpoints")
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
    )
    _, incomplete = checkpoint_files.step_dirs(self.directory)
    for step in incomplete:
      self._set_aside(
          step,
          "not a complete checkpoint (empty, or its save "
          "was cut off before orbax committed it)",
      )
    self._manager = self._new_manager()
    self._saved = None

  def _new_manager(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        paths.native(self.directory), options=self._options
    )

  def _set_aside(self, step: int, why: str) -> None:
    src = paths.join(self.directory, str(step))
    dst = paths.join(self.workdir, BROKEN_DIR, str(step))
    n = 1
    while paths.exists(dst):
      n += 1
      dst = paths.join(self.workdir, BROKEN_DIR, f"{step}_{n}")
    if jax.process_index() == 0:
      paths.makedirs(paths.dirname(dst))
      paths.rename(src, dst)  # On a bucket: each object copied, then gone.
    logging.warning(
        "checkpoint step %d in %s is %s; moved it to %s",
        step,
        self.directory,
        why,
        dst,
    )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"set_aside_{step}")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def describe_latest(self) -> str:
    step = self.latest_step()
    if step is None:
      return "No checkpoint was saved yet (the run stopped before its first)"
    return f"Last good checkpoint: step {step} in {self.directory}"

  def save(self, step: int, state: Any) -> None:
    if step == self._saved:  # E.g. a preemption on a checkpoint step.
      return
    self._check_space(step, state)
    with self._write_errors(step):
      self._manager.save(step, args=ocp.args.StandardSave(state))
    self._saved = step

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save the disk cannot hold, before a byte of it is written:
    a save that fills the disk half way fails inside orbax's threads. The
    old checkpoints are deleted only after the new one is committed, so the
    new one needs its whole size free."""
    need = sum(
        int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state)
    ) // max(1, jax.process_count())
    need = int(need * SPACE_MARGIN) + (1 << 20)  # + metadata.
    # The previous save must be on disk first (orbax's save waits for it
    # anyway): its bytes are then counted, and its own failure named.
    with self._write_errors(step):
      self._manager.wait_until_finished()
    if paths.is_remote(self.directory):
      free = need  # A bucket has no free space to ask about: no check.
    else:
      try:
        free = shutil.disk_usage(self.directory).free
      except OSError:  # Unknown (some mounts): let the save find out.
        free = need
    short = free < need
    if jax.process_count() > 1:  # Every host stops, or none: a save is a
      from jax.experimental import multihost_utils  # collective.

      votes = multihost_utils.process_allgather(np.int32(short))
      short = bool(np.max(votes))
    if short:
      with self._write_errors(step):
        raise OSError(
            errno.ENOSPC,
            f"{_mib(free)} free, a checkpoint needs {_mib(need)}"
            if free < need
            else "on another host's disk",
        )

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    """A failed write (a full disk, a quota, a read-only mount) as one line.

    Saves are asynchronous: a save's error surfaces at the next save or
    wait, so the step named is the newest one not committed on disk.
    """
    try:
      yield
    except Exception as e:  # Orbax and tensorstore raise many kinds.
      reason = _write_failure(e)
      if reason is None:
        raise
      good, _ = checkpoint_files.step_dirs(self.directory)
      pending = [s for s in (self._saved, step) if s is not None]
      failed = next((s for s in pending if s not in good), step)
      intact = (
          f"the previous checkpoint, step {good[-1]}, is intact"
          if good
          else "no checkpoint was saved before it"
      )
      raise CheckpointWriteError(
          f"{reason} while saving checkpoint {failed} to {self.directory}; "
          f"{intact}. Free space (or fix the mount) and run the same command "
          "again to resume"
      ) from e

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of abstract_state.

    Without `step`: the newest checkpoint that restores; a newer one that
    fails is set aside with a warning.
    """
    if step is not None:
      return self._restore(abstract_state, step)
    errors = []
    while (latest := self.latest_step()) is not None:
      # A checkpoint of another model is not a broken one: never set it aside.
      self._check_structure(abstract_state, latest)
      try:
        state = self._restore(abstract_state, latest)
      except Exception as e:  # Orbax and tensorstore raise many kinds.
        errors.append(f"step {latest}: {checkpoint_files.short_error(e)}")
        self._manager.close()
        self._set_aside(
            latest, f"unreadable ({checkpoint_files.short_error(e)})"
        )
        self._manager = self._new_manager()
        continue
      if errors:
        logging.warning(
            "resumed from step %d, the newest checkpoint that " "restores",
            latest,
        )
      return state
    raise checkpoint_files.NoCheckpointError(
        f"no checkpoint in {self.directory} restores ({'; '.join(errors)}); "
        f"the broken ones are in {paths.join(self.workdir, BROKEN_DIR)}. "
        "Use a new --workdir to start afresh"
    )

  def _check_structure(self, abstract_state: Any, step: int) -> None:
    """A clear error when the checkpoint holds other arrays than the
    configured model (a changed head, depth or flow.scan on resume)."""
    try:
      meta = ocp.StandardCheckpointer().metadata(
          paths.native(paths.join(self.directory, str(step), "default"))
      )
      saved = checkpoint_trees.shapes_by_path(
          getattr(meta, "item_metadata", meta)
      )
    except Exception:  # Unreadable metadata: restore fails and falls back.
      return
    if not saved:
      return
    detail = checkpoint_trees.structure_difference(abstract_state, saved)
    if detail is None:
      return
    raise ValueError(
        f"checkpoint step {step} in {self.directory} holds another model than "
        f"this config ({detail}): resume with the run's own config "
        "(its config.json), or use --config.init_from with a new --workdir "
        "to take the weights that fit"
    )

  def _restore(self, abstract_state: Any, step: int) -> Any:
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(abstract_state)
    )

  @contextlib.contextmanager
  def saved_if_failing(self, step: int, state: Any):
    """A failing sample grid or evaluation never costs training: the step's
    state is saved (and committed) first, then the error ends the run in one
    line (`--debug` shows its traceback)."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self.save(step, state)
      self.close()
      text = " ".join(str(e).split())[:300] or type(e).__name__
      raise EvaluationError(
          f"the sample grid / evaluation at step {step} failed "
          f"({type(e).__name__}: {text}); training is saved - "
          f"{self.describe_latest()}. Fix the sample/eval settings and run "
          "the same command again to resume"
      ) from e

  def wait(self) -> None:
    with self._write_errors(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._write_errors(None):
      self._manager.wait_until_finished()
    self._manager.close()
