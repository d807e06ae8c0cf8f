"""The error a user can fix: its message says what to change.

Raised anywhere in the package; every command (`cli.run`) ends on it with
one line on stderr and exit code 1 (`--debug` shows the traceback).
"""


class UserError(Exception):
  """An error whose message tells the user what to change."""
