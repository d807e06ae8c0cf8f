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

On a bucket (a `gs://` workdir) there is no `flock` and no file descriptor:
the lock is a lease kept in the object itself, through `utils/paths.py`. It
holds the holder's host, PID, start time, a token of its own and a
`heartbeat` time (in the content: an object's mtime is the upload's, and
buckets do not let it be set), rewritten every `HEARTBEAT_S`. A starter
refuses the run while another holder's heartbeat is younger than `LEASE_S`
(on this host: and its process is alive), else writes its own lease, waits
`CONFIRM_S` and reads it back: if another starter's lease replaced it, it
stops as if it had found that one first. Release deletes the object.

What a bucket lease does not protect:
- two starters within seconds of each other, when one's upload lands more
  than `CONFIRM_S` after the other's: both read no lease, and the first
  reads its own back before the second's replaces it, so both run (a
  bucket's compare-and-swap, GCS's generation preconditions, is not
  reachable through the path layer);
- a holder that stalls longer than `LEASE_S` without a heartbeat (a frozen
  host, a long network outage): its lease is taken over, and when its
  heartbeat finds the object is not its own any more it logs a warning,
  but it is not stopped;
- hosts whose clocks disagree by minutes: the heartbeat is the holder's
  clock, its age the reader's.
A dead holder's lease blocks the workdir until it is `LEASE_S` old, unless
it ran on this host (then its dead PID frees it at once).
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
import uuid

from absl import logging

from txt2img_jax.utils import paths
from txt2img_jax.utils.errors import UserError

LOCK_FILE = ".run.lock"
HEARTBEAT_S = 60.0  # The holder touches the file this often ...
LEASE_S = 600.0  # ... and another host's lock older than this is stale.
CONFIRM_S = 2.0  # A bucket lease is read back this long after it is written.
# The bucket leases this process holds: a lease naming this host and this
# PID is this process's only if its token is here (else it was left by an
# earlier process that had the same PID, a restarted container's).
_HELD_TOKENS: set[str] = set()


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
    self.workdir = workdir
    self.path = paths.join(workdir, LOCK_FILE)
    self.what = what
    self.remote = paths.is_remote(workdir)
    self._fd: int | None = None
    self._token: str | None = None  # A bucket lease's, while held.
    self._info: dict = {}
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

  def _mine(self) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "what": self.what,
    }

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(
        target=self._heartbeat, name="run-lock-heartbeat", daemon=True
    )
    self._thread.start()

  def acquire(self) -> "RunLock":
    if self.remote:
      return self._acquire_lease()
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
      mine = self._mine()
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(mine).encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._start_heartbeat()
    return self

  # --- A bucket lease: the object's content, no flock. ------------------------

  def _read_lease(self) -> dict:
    try:
      data = paths.read_bytes(self.path)
    except FileNotFoundError:
      return {}
    try:
      info = json.loads(data) if data.strip() else {}
    except ValueError:
      return {}
    return info if isinstance(info, dict) else {}

  def _lease_held(self, info: dict) -> float | None:
    """The age of another holder's lease that still holds the run, else
    None (no lease, mine, a dead PID of this host, or a stale heartbeat)."""
    if not info or info.get("token") == self._token:
      return None
    try:
      age = time.time() - float(info["heartbeat"])
    except (KeyError, TypeError, ValueError):
      return None  # Not a lease this module wrote.
    if info.get("host") == socket.gethostname():
      pid = int(info.get("pid", -1))
      if pid == os.getpid():
        alive = info.get("token") in _HELD_TOKENS
      else:
        alive = _pid_alive(pid)
      if not alive:
        return None
    return age if age < LEASE_S else None

  def _lease_age_of(self, info: dict) -> float | None:
    if info.get("host") == socket.gethostname():
      return None  # Judged by its PID as well: no lease to wait out.
    try:
      return max(0.0, time.time() - float(info["heartbeat"]))
    except (KeyError, TypeError, ValueError):
      return None

  def _acquire_lease(self) -> "RunLock":
    info = self._read_lease()
    age = self._lease_held(info)
    if age is not None:
      raise RunLockedError(self._busy(info, lease_age=self._lease_age_of(info)))
    if info:
      logging.warning(
          "%s: taking over the lock of a run that ended without releasing "
          "it (%s, %s); %s",
          self.path,
          _holder_text(info),
          info.get("what", "training"),
          "it is not running any more"
          if info.get("host") == socket.gethostname()
          else "its lease ran out",
      )
    self._token = uuid.uuid4().hex
    mine = dict(self._mine(), token=self._token, heartbeat=time.time())
    paths.write_text(self.path, json.dumps(mine))
    # Two starters within seconds: the later upload wins, the other stops.
    time.sleep(CONFIRM_S)
    info = self._read_lease()
    if info.get("token") != self._token:
      self._token = None
      raise RunLockedError(self._busy(info, lease_age=self._lease_age_of(info)))
    self._info = mine
    _HELD_TOKENS.add(self._token)
    self._start_heartbeat()
    return self

  def _renew_lease(self) -> None:
    info = self._read_lease()
    if info.get("token") != self._token:
      logging.warning(
          "%s: this run's lease was taken over by %s (no heartbeat for "
          "%.0f min?); two processes may now write this run",
          self.path,
          _holder_text(info) if info else "nobody (the lease was deleted)",
          LEASE_S / 60,
      )
      self._stop.set()
      return
    self._info["heartbeat"] = time.time()
    paths.write_text(self.path, json.dumps(self._info))

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
        f"{self.workdir} is in use by {who}, "
        f"{info.get('what', 'training')}{lease}: one process writes a run at "
        "a time. Wait for it to finish, stop it, or pass another --workdir"
    )

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if self.remote:
          self._renew_lease()
        else:
          os.utime(self.path)
      except Exception:  # pylint: disable=broad-except
        # A failed beat (OSError; a bucket client's own errors): the next
        # one tries again, and the lease outlasts several misses.
        pass

  def release(self) -> None:
    if self.remote:
      self._release_lease()
      return
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

  def _release_lease(self) -> None:
    if self._token is None:
      return
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      if self._read_lease().get("token") == self._token:
        paths.remove(self.path)  # Nobody holds the run.
    except OSError:
      pass  # Left behind: it runs out after LEASE_S.
    _HELD_TOKENS.discard(self._token)
    self._token = None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
