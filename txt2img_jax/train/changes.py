"""What a resume may change, and where the input stream stands.

A run resumed with another config is checked against its `config.json`.
Changes to what the run *is* (its batch size, data, model, objective,
tokenizer, seed) stop the run in one line listing them, unless the user
names them in `config.allow_changed`; every other change (total_steps, the
cadences, learning rates, losses) is allowed and logged in one line. Either
way the previous config is kept in `config_history.jsonl` before
`config.json` is replaced.

The input position: the pipeline's batch for step s starts at example
`s * batch_size` of the run's shuffled stream. After an allowed change of
batch size at step r, `input_position.json` records the segment
(step r, examples already seen, the new batch size), so the stream goes on
at the example where it stopped: none skipped, none seen twice.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax

from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import run_config
from txt2img_jax.utils import paths
from txt2img_jax.utils import runfiles

HISTORY_FILE = "config_history.jsonl"
POSITION_FILE = "input_position.json"

# Fields (or whole blocks) that define the run; everything else may change.
IDENTITY = (
    "batch_size",
    "seed",
    "objective",
    "dtype",
    "prng_impl",
    "data",
    "flow",
    "head",
    "image_encoder",
    "text_encoder",
    "autoencoder",
)
# Inside the identity blocks: how the run computes or reads, not what.
HOW_NOT_WHAT = frozenset(
    {
        "data.prefetch",
        "data.read_threads",
        "data.worker_count",
        "data.prepare_workers",
        "data.stream",
        "data.rebuild",
        "data.data_dir",
        "data.tfds_data_dir",
        "flow.remat",
        "autoencoder.stats_examples",
    }
)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) and v:
      out.update(_flat(v, name + "."))
    else:
      out[name] = v
  return out


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} over the leaves of two config dicts."""
  a, b = _flat(old), _flat(new)
  missing = object()
  out = {}
  for name in sorted(set(a) | set(b)):
    x, y = a.get(name, missing), b.get(name, missing)
    if isinstance(x, tuple):
      x = list(x)
    if isinstance(y, tuple):
      y = list(y)
    if x != y:
      out[name] = (
          None if x is missing else x,
          None if y is missing else y,
      )
  return out


def is_identity(name: str) -> bool:
  if name in HOW_NOT_WHAT:
    return False
  return any(name == f or name.startswith(f + ".") for f in IDENTITY)


def allowed_names(config) -> list[str]:
  return [n.strip() for n in config.allow_changed.split(",") if n.strip()]


def _allowed(name: str, allowed: list[str]) -> bool:
  return any(name == a or name.startswith(a + ".") for a in allowed)


def _show(v: Any) -> str:
  text = repr(v)
  return text if len(text) <= 40 else text[:37] + "..."


def config_changes(old_config, config) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} between two configs, `allow_changed` left out (it
  says what may change; it is not a change)."""
  old = old_config.to_dict()
  new = config.to_dict()
  for d in (old, new):
    d.pop("allow_changed", None)
  return differences(old, new)


def listed(changed: dict[str, tuple[Any, Any]]) -> str:
  """'field old -> new, ...' for a message or the log."""
  return ", ".join(
      f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changed.items()
  )


def previous_config(workdir: str):
  """The config of the run in `workdir` when it has a checkpoint to resume
  (else None: a new run, or one stopped before its first checkpoint)."""
  if not checkpoint_files.step_dirs(paths.join(workdir, "checkpoints"))[0]:
    return None
  return run_config.load(workdir) if run_config.exists(workdir) else None


def check_resume(config, old_config) -> dict:
  """The changes of this resume, checked: raises ValueError (one line) for
  a change of what the run is that `allow_changed` does not name."""
  changed = config_changes(old_config, config)
  refused = {
      k: v
      for k, v in changed.items()
      if is_identity(k) and not _allowed(k, allowed_names(config))
  }
  if refused:
    raise ValueError(
        f"this resume changes what the run is ({listed(refused)}): resume "
        "with the run's own config (its config.json), start a new --workdir, "
        f"or say so with --config.allow_changed={','.join(refused)}"
    )
  if changed:
    logging.info("resuming with changes: %s", listed(changed))
  return changed


def _segments(workdir: str, first_batch_size: int) -> list[dict]:
  if not paths.exists(paths.join(workdir, POSITION_FILE)):
    return [{"step": 0, "examples": 0, "batch_size": first_batch_size}]
  return runfiles.read_json(workdir, POSITION_FILE)


def examples_seen(segments: list[dict], step: int) -> int:
  """How many examples of the stream steps 0..step-1 consumed."""
  seg = [s for s in segments if s["step"] <= step][-1]
  return seg["examples"] + (step - seg["step"]) * seg["batch_size"]


def _history_row(old_config, changed: dict, start_step: int) -> dict:
  """The row config_history.jsonl keeps: the config the run had before
  `start_step`, and what changed."""
  return {
      "step": start_step,
      "changed": {k: list(v) for k, v in changed.items()},
      "previous": old_config.to_dict(),
  }


def _input_position(workdir: str, config, old_config, start_step: int):
  """(the example the stream starts at for `start_step` or None when the
  run's batch size never changed (then the step alone says it), the
  segments to write to input_position.json or None).

  A batch size changed now (an allowed change) starts a new segment at
  `start_step`."""
  first = old_config.batch_size if old_config is not None else None
  if old_config is None or (
      not paths.exists(paths.join(workdir, POSITION_FILE))
      and first == config.batch_size
  ):
    return None, None
  segments = _segments(workdir, first)
  segments = [s for s in segments if s["step"] <= start_step]
  seen = examples_seen(segments, start_step)
  if segments[-1]["batch_size"] == config.batch_size:
    return seen, None
  logging.info(
      "batch size %d -> %d at step %d: the input goes on at example %d "
      "(none skipped or seen twice)",
      segments[-1]["batch_size"],
      config.batch_size,
      start_step,
      seen,
  )
  new = {"step": start_step, "examples": seen, "batch_size": config.batch_size}
  return seen, segments + [new]


def settle(
    workdir: str,
    config,
    old_config,
    changed: dict,
    start_step: int,
    latent_shape,
) -> int | None:
  """Once the state is known to fit (restored, or initialised): the example
  the input stream starts at (a new segment of input_position.json after a
  change of batch size), the previous config kept in config_history.jsonl,
  then config.json replaced by this run's (the files by process 0).
  `old_config` is None (and `changed` empty) unless the run resumed."""
  history = _history_row(old_config, changed, start_step) if changed else None
  start_example, segments = _input_position(
      workdir, config, old_config, start_step
  )
  if jax.process_index() == 0:
    if segments is not None:
      runfiles.write_json(workdir, POSITION_FILE, segments, indent=1)
    if history is not None:
      runfiles.append_json_line(workdir, HISTORY_FILE, history)
    run_config.save(config, workdir, latent_shape)
  return start_example
