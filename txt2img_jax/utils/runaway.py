"""The watch that stops a run whose updates have run away (`RunawayGuard`),
fed each step's metrics by `reporting.Reporter`."""

from __future__ import annotations

from typing import Any

from absl import logging


class RunawayError(ValueError):
  """The run was stopped because its updates ran away; the message says why
  and what to change. (A ValueError: commands print it as one line.)"""


class RunawayGuard:
  """Watches each step's `skipped` and `update_ratio` as they are fetched.

  The train step refuses an update that is non-finite or larger than
  config.max_update_ratio x the parameters, so the state never holds it; this
  decides when refusing is no longer enough and the run must stop: one
  absurd update, or config.max_skipped_steps skipped steps in a row.
  """

  def __init__(self, config):
    self.max_skipped = int(config.max_skipped_steps)
    self.max_ratio = float(config.max_update_ratio)
    self.streak = 0
    self.failure: str | None = None

  def check(self, step: int, row: dict[str, Any]) -> None:
    if self.failure is not None or "skipped" not in row:
      return
    ratio = float(row.get("update_ratio", 0.0))
    if self.max_ratio > 0 and ratio > self.max_ratio:
      groups = {
          k.split("/", 1)[1]: float(v)
          for k, v in row.items()
          if k.startswith("update_ratio/")
      }
      worst = max(groups, key=groups.get) if groups else "?"
      self.failure = (
          f"step {step}'s update was {ratio:.3g} x the parameter norm (group "
          f"{worst}), above config.max_update_ratio={self.max_ratio:g}; it was "
          "not applied. The learning rate is far too high: lower "
          f"config.optim.groups.{worst}.lr"
      )
      return
    if not bool(row["skipped"]):
      self.streak = 0
      return
    self.streak += 1
    if self.streak == 1:
      logging.warning(
          "step %d skipped: its loss or gradient is not finite "
          "(update_ratio %.3g)",
          step,
          ratio,
      )
    if self.max_skipped > 0 and self.streak >= self.max_skipped:
      self.failure = (
          f"{self.streak} steps in a row (up to step {step}) had a non-finite "
          f"loss or gradient (config.max_skipped_steps={self.max_skipped}): "
          "the run is not learning any more. Lower the learning rates or "
          "check the data"
      )
