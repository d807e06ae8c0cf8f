"""What every health check returns: a verdict, a one-line reason and its numbers."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Result:
  """What a check found: the verdict, a one-line reason and its numbers."""

  check: str
  passed: bool
  reason: str
  numbers: dict[str, Any]

  @property
  def verdict(self) -> str:
    return f"{self.check}: {'PASS' if self.passed else 'FAIL'} — {self.reason}"
