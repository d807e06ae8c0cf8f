"""Progress on the console, metrics to TensorBoard and metrics.jsonl, and
the one helper that decides when it is time to log, save, sample or
evaluate; each step's metrics go past the runaway watch (`runaway.py`)."""

from __future__ import annotations

import dataclasses
import json
import logging as logging_lib
import time
from typing import Any

from absl import flags
from absl import logging
import jax
import numpy as np

from txt2img_jax.utils import metric_names
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles
from txt2img_jax.utils import runaway

METRICS_FILE = runfiles.METRICS_FILE
# Per-step metrics of an interval cut short by a preemption, so the resumed
# run logs the same averages as a run that was never stopped.
PARTIAL_FILE = "metrics_partial.json"
# Loss EMAs on the host, per log step: smooth enough to read a trend in a few
# hundred steps of the embedded run, fast enough to show a restart.
LOSS_EMA = 0.9
EMA_KEYS = metric_names.EMA_KEYS


class _QuietOrbax(logging_lib.Filter):
  """absl routes orbax's records through its own logger; keep warnings.

  Orbax also logs, with its traceback, every error of its background save
  threads; the same error is raised again in the main thread, where the
  command reports it in one line. Those records are dropped unless
  `--debug` asks for tracebacks.
  """

  def filter(self, record):
    quiet = (
        "orbax" in record.pathname
        or "checkpoint" in record.pathname
        or "tensorstore" in record.pathname
    )
    if "orbax" in record.pathname and record.exc_info and not _debug():
      return False
    return not quiet or record.levelno >= logging_lib.WARNING


def _debug() -> bool:
  try:
    return bool(flags.FLAGS["debug"].value)
  except (KeyError, AttributeError):  # No cli: no --debug flag.
    return False


def quiet_orbax() -> None:
  """Orbax logs every file it writes; a command's log should show the run.

  Call once from a command's main (warnings and errors still show).
  """
  logging_lib.getLogger("orbax").setLevel(logging_lib.WARNING)
  absl_logger = logging_lib.getLogger("absl")
  if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietOrbax())


def create_writer(config, workdir: str):
  """The run's TensorBoard writer (process 0; the others only log), with the
  config's fields as its hparams. A bucket workdir is handed to TensorFlow's
  writer as it is (`paths.native`)."""
  # clu brings TensorFlow: imported here, so that the commands that only
  # read a run (`sample`) do not load it.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  writer = metric_writers.create_default_writer(
      paths.native(workdir),
      just_logging=jax.process_index() != 0,
      asynchronous=True,
  )
  writer.write_hparams(flat_hparams(config))
  return writer


def flat_hparams(config) -> dict[str, Any]:
  """{"block.field": value} over the config's scalar leaves."""
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      name = f"{prefix}{k}"
      if isinstance(v, dict):
        walk(name + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        out[name] = v

  walk("", config.to_dict())
  return out


class Periodic:
  """Is it time? One place for every interval, and the final step."""

  def __init__(self, config, total_steps: int):
    self.total = total_steps
    self.every = {
        "log": config.log_every,
        "checkpoint": config.checkpoint_every,
        "sample": config.sample_every,
        "eval": config.eval_every,
    }

  def _due(self, kind: str, step: int) -> bool:
    every = self.every[kind]
    if step == self.total:
      return True
    if every <= 0:
      return False
    # A save two steps before the final one is wasted work.
    if kind == "checkpoint" and self.total - step < max(2, every // 10):
      return False
    return step % every == 0

  def log(self, step):
    return self._due("log", step)

  def checkpoint(self, step):
    return self._due("checkpoint", step)

  def sample(self, step):
    return self._due("sample", step)

  def eval(self, step):
    return self._due("eval", step)


@dataclasses.dataclass(frozen=True)
class Due:
  """What else a step is for, besides its metrics (`Reporter.after_step`)."""

  checkpoint: bool
  sample: bool
  eval: bool


class Reporter:
  """Averages device metrics over a log interval and writes them out, and
  says what a step is due for (`Periodic`)."""

  def __init__(self, config, workdir: str, start_step: int, train_step=None):
    """`train_step`: the jitted step, watched for recompiles
    (`config.max_compiles`)."""
    self.writer = create_writer(config, workdir)
    self.train_step = train_step
    self.max_compiles = config.max_compiles
    self.total = config.total_steps
    self.start_step = start_step
    self.workdir = workdir
    self.path = runfiles.metrics_path(workdir)
    self.is_main = jax.process_index() == 0
    self._rows: list[dict[str, np.ndarray]] = []
    self._ema: dict[str, float] = {}
    self._t0 = time.perf_counter()
    self._t_last = self._t0
    self._step_last = start_step
    self.last: dict[str, float] = {}
    self.guard = runaway.RunawayGuard(config)
    self.hooks = Periodic(config, self.total)
    self._pending = None  # The last step's metrics, not yet fetched.
    # Also from step 0: a run killed before its first checkpoint left rows.
    if paths.exists(self.path):
      self._restore_ema(start_step)

  def _restore_ema(self, start_step: int) -> None:
    """A resumed run continues its loss EMAs and drops log lines past the
    checkpoint (they will be written again, identically)."""
    kept = [
        r
        for r in runfiles.read_metrics(self.workdir)
        if r.get("step", 0) <= start_step
    ]
    for row in kept:
      for k in EMA_KEYS:
        if f"train/{k}_ema" in row:
          self._ema[k] = row[f"train/{k}_ema"]
    if self.is_main:
      runfiles.write_metrics(self.workdir, kept)
    self._rows = _load_partial(
        paths.join(self.workdir, PARTIAL_FILE), start_step
    )

  def after_step(self, step: int, metrics, stopping: bool = False) -> Due:
    """Keeps `step`'s device metrics and fetches the previous step's, so
    logging never stalls the device; a step that is logged or saved (or
    stops the run) has its own fetched and checked first. Writes the
    interval out on a log step or a failure (`failure`); on a stop, keeps
    the rows since the last log for the resume (`save_partial`). Raises
    when the train step compiled more often than `max_compiles`. The final
    step is always logged, so nothing is left to fetch after it."""
    if self._pending is not None:
      self.add(*self._pending)
    self._pending = (step, metrics)
    log = self.hooks.log(step)
    due = Due(
        self.hooks.checkpoint(step) or stopping,
        self.hooks.sample(step),
        self.hooks.eval(step),
    )
    if log or due.checkpoint:
      self.add(*self._pending)
      self._pending = None
    if log or self.failure:
      self.flush(step)
    if stopping and not self.failure:
      self.save_partial(step)
    if self.train_step is not None:
      check_compiles(self.train_step, self.max_compiles)
    return due

  def save_partial(self, step: int) -> None:
    """Keeps the steps logged since the last flush for a resume at `step`."""
    if not self.is_main:
      return
    path = paths.join(self.workdir, PARTIAL_FILE)
    rows = [
        {
            k: [str(np.asarray(v).dtype), np.asarray(v).tolist()]
            for k, v in r.items()
        }
        for r in self._rows
    ]
    paths.write_text(path, json.dumps({"step": step, "rows": rows}))

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    """Fetches one step's metrics (one step late) and checks them."""
    row = jax.device_get(metrics)
    self._rows.append(row)
    self.guard.check(step, row)

  @property
  def failure(self) -> str | None:
    """Why the run must stop (runaway updates), or None."""
    return self.guard.failure

  def flush(self, step: int) -> dict[str, float]:
    if not self._rows:
      return self.last
    rows, self._rows = self._rows, []
    out = {}
    for k in rows[0]:
      if k.startswith("flow_bucket_"):
        continue
      out[f"train/{k}"] = float(np.mean([r[k] for r in rows]))
    out["train/nonfinite_steps"] = float(rows[-1]["nonfinite_steps"])
    sums = np.sum([r["flow_bucket_sum"] for r in rows], axis=0)
    counts = np.sum([r["flow_bucket_count"] for r in rows], axis=0)
    for i, (s, n) in enumerate(zip(sums, counts)):
      if n > 0:
        out[f"train/loss_flow_bucket/{i}"] = float(s / n)
    for k in EMA_KEYS:
      v = out.get(f"train/{k}")
      if v is None or not np.isfinite(v):
        continue
      prev = self._ema.get(k)
      self._ema[k] = v if prev is None else LOSS_EMA * prev + (1 - LOSS_EMA) * v
      out[f"train/{k}_ema"] = self._ema[k]
    now = time.perf_counter()
    steps = step - self._step_last
    out["train/steps_per_sec"] = steps / max(now - self._t_last, 1e-9)
    self._t_last, self._step_last = now, step
    self._console(step, out)
    self.writer.write_scalars(step, out)
    self.write_jsonl(step, out)
    self.last = out
    return out

  def write_jsonl(self, step: int, values: dict[str, float]) -> None:
    if self.is_main:
      runfiles.append_metrics(self.workdir, {"step": step, **values})

  def _console(self, step: int, out: dict[str, float]) -> None:
    done = step - self.start_step
    elapsed = time.perf_counter() - self._t0
    rate = done / max(elapsed, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    lrs = " ".join(
        f"{k.split('/')[-1]}={v:.2e}"
        for k, v in out.items()
        if k.startswith("train/lr/")
    )
    logging.info(
        "step %d/%d (%.0f%%) loss %.4f flow %.4f kl_raw %.1f clip_raw %.3f | "
        "grad %.3f | %s | %.2f steps/s, elapsed %s, ETA %s",
        step,
        self.total,
        100 * step / self.total,
        out["train/loss"],
        out["train/loss_flow"],
        out["train/kl_raw"],
        out["train/clip_raw"],
        out["train/grad_norm"],
        lrs,
        out["train/steps_per_sec"],
        _hms(elapsed),
        _hms(eta),
    )


def _load_partial(path: str, start_step: int) -> list[dict[str, np.ndarray]]:
  """The rows save_partial kept, if they belong to this resume's step."""
  if not paths.exists(path):
    return []
  try:
    saved = json.loads(paths.read_text(path))
  except ValueError:
    logging.warning(
        "%s is damaged; the log interval around the resume "
        "averages fewer steps",
        path,
    )
    return []
  if saved.get("step") != start_step:
    return []
  return [
      {k: np.asarray(v, dtype=dtype) for k, (dtype, v) in r.items()}
      for r in saved["rows"]
  ]


def _hms(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def num_compiles(jitted) -> int:
  return jitted._cache_size()  # pylint: disable=protected-access


def check_compiles(jitted, limit: int) -> None:
  """The step must compile once: a recompile is a silent 10x slowdown."""
  n = num_compiles(jitted)
  if limit and n > limit:
    raise RuntimeError(
        f"the train step compiled {n} times (limit max_compiles={limit}): "
        "an input changed shape, dtype or sharding between steps"
    )


def param_counts(params) -> str:
  counts = {
      k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
      for k, v in params.items()
  }
  total = sum(counts.values())
  return ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()) + (
      f"; total {total / 1e6:.2f}M"
  )
