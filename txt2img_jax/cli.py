"""What every command line shares: flags parsed once, and one-line errors.

Each command ends in `cli.run(main)` instead of `app.run(main)`. absl's own
parser would run a second time if the flags were parsed by hand first, and
ml_collections then defines every `--config.x=` override flag twice (the bug
that made every override crash). Here the flags are parsed exactly once, by a
parser that turns a bad command line into one line on stderr.

Errors a user can cause and fix (a bad value, a missing file or workdir, a
config that does not fit the data) are raised as `UserError` or as the
built-in exceptions in `EXPECTED`; they end the command with one line on
stderr and exit code 1. Anything else is a bug and keeps its traceback.
`--debug` shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags

from txt2img_jax.utils.errors import UserError

_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the full traceback of an error instead of one line."
)


class DistributedFlags:
  """--distributed and its three companions, for commands that run on every
  host of a pod (main, prepare); define once per command at module level."""

  def __init__(self):
    self.coordinator = flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-host only: host:port of process 0 "
        "(on Cloud TPU and Slurm, leave unset: jax.distributed finds it).",
    )
    self.distributed = flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() (pods, "
        "multi-node GPU clusters, launch_local).",
    )
    self.num_processes = flags.DEFINE_integer(
        "num_processes",
        None,
        "Multi-host only: how many processes in all "
        "(unset on Cloud TPU and Slurm).",
    )
    self.process_id = flags.DEFINE_integer(
        "process_id",
        None,
        "Multi-host only: this process's index in "
        "[0, num_processes) (unset on Cloud TPU and Slurm).",
    )

  def initialize(self, config) -> None:
    """Joins the cluster when --distributed and checks that every host got
    the same config; a no-op otherwise."""
    if self.distributed.value:
      from txt2img_jax.utils import multihost  # pylint: disable=g-import-not-at-top

      multihost.initialize(
          self.coordinator.value,
          self.num_processes.value,
          self.process_id.value,
      )
      multihost.check_same_config(config)
    elif self.num_processes.value or self.process_id.value is not None:
      raise app.UsageError("--num_processes/--process_id need --distributed")


# Raised with a message meant for the user by validation and file handling.
EXPECTED = (
    UserError,
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    IsADirectoryError,
)


def _one_line(e: BaseException) -> str:
  text = str(e).strip()
  if isinstance(e, KeyError):
    text = text.strip("\"'")
  if "Traceback (most recent call last)" in text:
    # ml_collections puts a config file's whole traceback into the message;
    # its last line is the error itself.
    text = text.splitlines()[-1]
  return " ".join(text.split()) or type(e).__name__


def _fail(prog: str, message: str, code: int = 1) -> None:
  sys.stderr.write(f"{prog}: error: {message}\n")
  sys.exit(code)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flags_parser for app.run: parses once, errors in one line."""
  prog = _prog(argv)
  try:
    rest = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for a --config.<field> the config lacks.
    name = str(e)
    while len(name) > 1 and name[0] in "\"'" and name[-1] in "\"'":
      name = name[1:-1]
    _fail(
        prog,
        f"unknown config field {name!r} in the command line; "
        "every field is listed and documented in configs/base.py and "
        "configs/base_model.py",
    )
  except flags.Error as e:
    _fail(prog, _describe(_root_cause(e)))
  except Exception as e:  # The config file itself: missing, broken, raising.
    if _wants_traceback(argv):
      raise
    _fail(prog, _describe(e))
  for name in flags.FLAGS:
    # ml_collections defers a config file that failed to load (missing,
    # unreadable) to its first use; report it now, in one line.
    value = flags.FLAGS[name].value
    if type(value).__name__ == "_ErrorConfig":
      path = (
          flags.FLAGS[name].config_filename
          if hasattr(flags.FLAGS[name], "config_filename")
          else name
      )
      reason = str(object.__getattribute__(value, "_error")).strip()
      _fail(
          prog,
          f"cannot load --{name}={path}: {reason.splitlines()[-1].strip()}",
      )
  return rest


def _root_cause(e: BaseException) -> BaseException:
  """ml_collections wraps a config file's own error; show the file's error."""
  while e.__cause__ is not None and isinstance(e, flags.Error):
    e = e.__cause__
  return e


def _describe(e: BaseException) -> str:
  """The message alone for errors meant for users, else with its type."""
  if isinstance(e, (flags.Error,) + EXPECTED):
    return _one_line(e)
  return f"{type(e).__name__}: {_one_line(e)}"


def _wants_traceback(argv: Sequence[str]) -> bool:
  return any(a in ("--debug", "--debug=true", "--debug=True") for a in argv)


def _prog(argv: Sequence[str]) -> str:
  name = os.path.basename(argv[0]) if argv else "txt2img_jax"
  if name in ("__main__.py", "-m", "-c") or name.endswith(".py"):
    module = getattr(sys.modules.get("__main__"), "__spec__", None)
    if module is not None and module.name:
      return module.name.removesuffix(".__main__").rsplit(".", 1)[-1]
    return name.removesuffix(".py")
  return name


def run(
    main: Callable[[list[str]], None], required: Sequence[str] = ()
) -> None:
  """app.run(main) with one parse of the flags and one-line user errors."""
  if required:
    flags.mark_flags_as_required(list(required))

  def guarded(argv):
    try:
      main(argv)
    except (app.UsageError,) + EXPECTED as e:
      if _DEBUG.value:
        raise
      # A command may give its usage errors their own exit code (health: 2).
      code = e.exitcode if isinstance(e, app.UsageError) else 1
      if getattr(e, "exit_at_once", False):
        # Background writers (a failed checkpoint save's threads) would
        # print their own tracebacks while the interpreter shuts down.
        sys.stderr.write(f"{_prog(sys.argv)}: error: {_one_line(e)}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code or 1)
      _fail(_prog(sys.argv), _one_line(e), code or 1)
    except OSError as e:  # A full disk anywhere else (metrics, grids, logs).
      if _DEBUG.value or e.errno not in (errno.ENOSPC, errno.EDQUOT):
        raise
      _fail(
          _prog(sys.argv),
          f"{e.strerror.lower()}: {e.filename or 'while writing'}; "
          "free space and run the same command again (a training run "
          "resumes from its last checkpoint)",
      )

  app.run(guarded, flags_parser=parse_flags)
