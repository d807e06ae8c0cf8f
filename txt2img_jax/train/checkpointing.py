"""Orbax checkpoints of the whole train state, and partial loading.

A checkpoint is the train state pytree (step, params, EMA params, optimizer
state, rng, counters). The input pipeline is a pure function of the step, so
the step alone restores the input position.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from txt2img_jax.utils.errors import UserError

# What orbax writes last when it commits a step (after every array and the
# tree's _METADATA): a step dir without these is an interrupted save.
_COMMIT_FILES = ("_CHECKPOINT_METADATA", os.path.join("default", "_METADATA"))
BROKEN_DIR = "checkpoints_broken"


def local_workdir(workdir: str) -> str:
  """The absolute path of a workdir on a file system this host mounts.

  The run's files (metrics, config, samples, and the checks of which
  checkpoints are complete) go through os and open(), which take no URLs: a
  gs:// workdir would silently become a local folder named 'gs:'.
  """
  if "://" in workdir:
    raise ValueError(
        f"--workdir={workdir}: the workdir must be a mounted path, not a URL; "
        "mount the bucket on every host (gcsfuse, see launch/README.md) and "
        "pass the mount path, e.g. /gcs/<bucket>/<run>"
    )
  return os.path.abspath(os.path.expanduser(workdir))


class NoCheckpointError(FileNotFoundError):
  """No readable checkpoint where one was expected."""


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


def is_complete(step_dir: str) -> bool:
  """A committed step: orbax's commit files present and not empty.

  Cheap (no array is read): a truncated array file passes, and is caught
  when the restore fails.
  """
  return all(
      os.path.isfile(p) and os.path.getsize(p) > 0
      for p in (os.path.join(step_dir, f) for f in _COMMIT_FILES)
  )


def step_dirs(directory: str) -> tuple[list[int], list[int]]:
  """(complete steps, incomplete steps) of a checkpoints dir, ascending."""
  if not os.path.isdir(directory):
    return [], []
  steps = sorted(
      int(d)
      for d in os.listdir(directory)
      if d.isdigit() and os.path.isdir(os.path.join(directory, d))
  )
  good = [s for s in steps if is_complete(os.path.join(directory, str(s)))]
  return good, [s for s in steps if s not in good]


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
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=async_save,
    )
    _, incomplete = step_dirs(self.directory)
    for step in incomplete:
      self._set_aside(
          step,
          "not a complete checkpoint (empty, or its save "
          "was cut off before orbax committed it)",
      )
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)
    self._saved = None

  def _set_aside(self, step: int, why: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.workdir, BROKEN_DIR, str(step))
    n = 1
    while os.path.exists(dst):
      n += 1
      dst = os.path.join(self.workdir, BROKEN_DIR, f"{step}_{n}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.rename(src, dst)
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
      good, _ = step_dirs(self.directory)
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
        errors.append(f"step {latest}: {_short(e)}")
        self._manager.close()
        self._set_aside(latest, f"unreadable ({_short(e)})")
        self._manager = ocp.CheckpointManager(
            self.directory, options=self._options
        )
        continue
      if errors:
        logging.warning(
            "resumed from step %d, the newest checkpoint that " "restores",
            latest,
        )
      return state
    raise NoCheckpointError(
        f"no checkpoint in {self.directory} restores ({'; '.join(errors)}); "
        f"the broken ones are in {os.path.join(self.workdir, BROKEN_DIR)}. "
        "Use a new --workdir to start afresh"
    )

  def _check_structure(self, abstract_state: Any, step: int) -> None:
    """A clear error when the checkpoint holds other arrays than the
    configured model (a changed head, depth or flow.scan on resume)."""
    try:
      meta = ocp.StandardCheckpointer().metadata(
          os.path.join(self.directory, str(step), "default")
      )
      saved = _shapes_by_path(getattr(meta, "item_metadata", meta))
    except Exception:  # Unreadable metadata: restore fails and falls back.
      return
    if not saved:
      return
    detail = structure_difference(abstract_state, saved)
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

  def wait(self) -> None:
    with self._write_errors(None):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._write_errors(None):
      self._manager.wait_until_finished()
    self._manager.close()


def structure_difference(want: Any, saved: Any) -> str | None:
  """None when two trees (arrays, abstract arrays, orbax metadata or
  `_shapes_by_path` dicts) hold the same paths and shapes, else what
  differs, in a few words."""
  want = want if _is_shape_dict(want) else _shapes_by_path(want)
  saved = saved if _is_shape_dict(saved) else _shapes_by_path(saved)
  if saved == want:
    return None
  missing = sorted(set(want) - set(saved))
  extra = sorted(set(saved) - set(want))
  reshaped = sorted(k for k in set(want) & set(saved) if want[k] != saved[k])
  detail = "; ".join(
      f"{name}: {', '.join(keys[:3])}"
      + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")
      for name, keys in (
          ("not in the checkpoint", missing),
          ("only in the checkpoint", extra),
          ("other shape", reshaped),
      )
      if keys
  )
  if any(k.endswith("rng") for k in reshaped):
    detail += " - the random key's shape: another prng_impl"
  return detail


def _is_shape_dict(tree: Any) -> bool:
  return isinstance(tree, dict) and all(
      isinstance(v, tuple) for v in tree.values()
  )


def _shapes_by_path(tree: Any) -> dict[str, tuple]:
  """{'params/flow/...': shape} for a state, its abstract form or orbax's
  metadata of it (dataclass fields and dict keys named alike)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [
        str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
        for k in path
    ]
    out["/".join(names)] = tuple(getattr(leaf, "shape", ()) or ())
  return out


def _short(e: BaseException, n: int = 200) -> str:
  """Orbax errors can be 100 KB long (a whole tree); a log line needs the
  gist."""
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= n else text[:n] + "..."


def _candidates(path: str) -> tuple[str, list[int]]:
  """(checkpoints dir, its complete steps, newest first) for `path`."""
  path = os.path.abspath(path)
  for directory in (os.path.join(path, "checkpoints"), path):
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
  parent, leaf = os.path.split(path)
  if leaf.isdigit() and os.path.isdir(path):
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
  """The saved state as nested dicts of host arrays, whatever its model.

  Falls back to an older complete step, with a warning, when the newest
  does not restore (a truncated array file).
  """
  directory, steps = _candidates(path)
  errors = []
  for step in steps:
    try:
      raw = _restore_to_host(os.path.join(directory, str(step), "default"))
    except Exception as e:  # Orbax and tensorstore raise many kinds.
      errors.append(f"step {step}: {_short(e)}")
      logging.warning(
          "%s: checkpoint step %d does not restore (%s); trying "
          "an older one",
          directory,
          step,
          _short(e),
      )
      continue
    return raw, step
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


def _flatten(tree: Any) -> dict[str, Any]:
  flat = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[_path_name(keypath)] = leaf
  return flat


def _path_name(keypath) -> str:
  """'a/b/0' for the path of a leaf in nested dicts, dataclasses, lists."""
  return jax.tree_util.keystr(keypath, simple=True, separator="/")


def merge_matching(target: Any, source: Any) -> tuple[Any, dict[str, list]]:
  """Takes every leaf of `source` whose path and shape match one in `target`.

  Returns the merged tree (target's structure) and a table with the paths
  that were loaded, newly initialised (only in target or shape differs) and
  dropped (only in source).
  """
  src = _flatten(source)
  loaded, new = [], []

  def pick(keypath, leaf):
    name = _path_name(keypath)
    other = src.get(name)
    if other is not None and np.shape(other) == np.shape(leaf):
      loaded.append(name)
      return np.asarray(other, dtype=np.asarray(leaf).dtype)
    new.append(
        name
        if other is None
        else f"{name} (shape {np.shape(other)} -> {np.shape(leaf)})"
    )
    return leaf

  merged = jax.tree_util.tree_map_with_path(pick, target)
  target_names = set(_flatten(target))
  dropped = sorted(n for n in src if n not in target_names)
  return merged, {"loaded": loaded, "new": new, "dropped": dropped}


def format_merge_table(table: dict[str, list], max_rows: int = 40) -> str:
  lines = [
      f"loaded {len(table['loaded'])}, new {len(table['new'])}, "
      f"dropped {len(table['dropped'])} parameters"
  ]
  for kind in ("new", "dropped"):
    for name in table[kind][:max_rows]:
      lines.append(f"  {kind:8s} {name}")
    if len(table[kind]) > max_rows:
      lines.append(f"  ... {len(table[kind]) - max_rows} more {kind}")
  return "\n".join(lines)


def log_merge_table(table: dict[str, list]) -> None:
  for line in format_merge_table(table).splitlines():
    logging.info("%s", line)
