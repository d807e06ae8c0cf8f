"""Stop cleanly on SIGTERM or SIGINT: what a TPU preemption, Slurm's time
limit or Ctrl-C sends.

The handler only records the signal; the train loop asks `requested()` once
per step, so the step in flight finishes, a checkpoint of it is written, and
the command exits 0. Running the same command again resumes from there. A
second signal stops at once (the usual meaning of a second Ctrl-C).

On several hosts every host must stop at the same step, or the checkpoint
save (a collective) hangs. There JAX's coordination service already catches
the preemption notice, and `reached_preemption_sync_point` makes the hosts
agree on the step (the mechanism orbax's own preemption support uses).
"""

from __future__ import annotations

import os
import signal
import threading

from absl import logging
import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
  """Context manager: installs the handlers for the loop, then restores."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}
    self._multihost = jax.process_count() > 1

  def __enter__(self) -> "StopOnSignal":
    if self._multihost:
      return self
    if threading.current_thread() is not threading.main_thread():
      # Python only delivers signals to the main thread.
      logging.warning(
          "not on the main thread: SIGTERM/SIGINT will not "
          "save a checkpoint before stopping"
      )
      return self
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_name is not None:
      # Second signal: no more waiting.
      self.__exit__()
      os.kill(os.getpid(), signum)
      return
    self.signal_name = signal.Signals(signum).name
    logging.warning(
        "%s received: finishing this step, then saving a "
        "checkpoint and stopping (send it again to stop at once)",
        self.signal_name,
    )

  def requested(self, step: int) -> bool:
    """True once a stop was asked for; `step` is the step just finished."""
    if self._multihost:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "preemption notice"
        return True
      return False
    return self.signal_name is not None

  def report(self, step: int, checkpoint_dir: str) -> None:
    """The line that says what happened and how to go on."""
    logging.warning(
        "stopped by %s after step %d; checkpoint saved in %s. Run "
        "the same command again to resume.",
        self.signal_name,
        step,
        checkpoint_dir,
    )
