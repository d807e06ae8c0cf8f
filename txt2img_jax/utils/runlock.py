"""One writer per run: a lock file in the workdir, held for the run's life.

`<workdir>/.run.lock` is locked with `flock` by the process that trains in
the workdir (process 0 of a multi-host run), and holds who that is (host,
PID, start time). The kernel drops a `flock` when its process dies however it
dies (`kill -9` included), so a lock left by a dead run is simply taken over,
with a warning naming it. A second process that finds the lock held stops
before writing anything, in one line naming the holder.

File systems that ignore `flock` (some network and FUSE mounts) are covered
by the file's content: a holder on this host whose PID is alive, or on
another host whose lease (the file's mtime, refreshed every `HEARTBEAT_S`
by the holder) is younger than `LEASE_S`, still holds the run.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging

from txt2img_jax.utils.errors import UserError

LOCK_FILE = ".run.lock"
HEARTBEAT_S = 60.0  # The holder touches the file this often ...
LEASE_S = 600.0  # ... and another host's lock older than this is stale.


class RunLockedError(UserError):
  """Another live process trains in this workdir."""


def _holder_text(info: dict) -> str:
  return (
      f"PID {info.get('pid')} on host {info.get('host')} (started "
      f"{info.get('started', '?')})"
  )


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


class RunLock:
  """Context manager: `with RunLock(workdir, what="training"):`.

  `acquire()` raises RunLockedError (one line) when a live process holds the
  workdir; `release()` runs on every exit of the `with` block.
  """

  def __init__(self, workdir: str, what: str = "training"):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.what = what
    self._fd: int | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _read(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    try:
      info = json.loads(data) if data.strip() else {}
    except ValueError:
      return {}
    return info if isinstance(info, dict) else {}

  def _still_held(self, info: dict, fd: int) -> bool:
    """A lock whose flock was free: held all the same where flock is a
    no-op (a live PID on this host, a fresh lease from another)."""
    if not info or info.get("pid") == os.getpid():
      return False
    if info.get("host") == socket.gethostname():
      return _pid_alive(int(info.get("pid", -1)))
    age = time.time() - os.fstat(fd).st_mtime
    return age < LEASE_S

  def acquire(self) -> "RunLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        raise RunLockedError(self._busy(self._read(fd))) from None
      info = self._read(fd)
      if self._still_held(info, fd):
        raise RunLockedError(
            self._busy(info, lease_age=self._lease_age(info, fd))
        )
      if info:
        logging.warning(
            "%s: taking over the lock of a run that ended without releasing "
            "it (%s, %s); it is not running any more",
            self.path,
            _holder_text(info),
            info.get("what", "training"),
        )
      mine = {
          "pid": os.getpid(),
          "host": socket.gethostname(),
          "started": datetime.datetime.now().isoformat(timespec="seconds"),
          "what": self.what,
      }
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(mine).encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._thread = threading.Thread(
        target=self._heartbeat, name="run-lock-heartbeat", daemon=True
    )
    self._thread.start()
    return self

  def _lease_age(self, info: dict, fd: int) -> float | None:
    if info.get("host") == socket.gethostname():
      return None  # Judged by its PID, not a lease.
    return time.time() - os.fstat(fd).st_mtime

  def _busy(self, info: dict, lease_age: float | None = None) -> str:
    who = _holder_text(info) if info else "another process"
    lease = (
        ""
        if lease_age is None
        else f" (if it is gone, its lease ends in "
        f"{max(0.0, LEASE_S - lease_age) / 60:.0f} min)"
    )
    return (
        f"{os.path.dirname(self.path)} is in use by {who}, "
        f"{info.get('what', 'training')}{lease}: one process writes a run at "
        "a time. Wait for it to finish, stop it, or pass another --workdir"
    )

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self) -> None:
    if self._fd is None:
      return
    self._stop.set()
    try:
      os.ftruncate(self._fd, 0)  # Empty: nobody holds the run.
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
