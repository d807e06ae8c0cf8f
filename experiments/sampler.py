"""The sampler's settings, scored on trained runs, seeds pooled.

  python -m experiments.sampler --workdir=workdirs/sweep/restart.py_s0 \
      [--workdir=OTHER_RUN ...] [--setting='label:steps=1,method=heun,...' ...] \
      [--num=500] [--out=sampler.md]

Guidance, the integrator and its steps change nothing in training: they can
be compared on runs that already exist. Every run (--workdir) is scored with
its EMA parameters under every setting (`steps`, `method`, `cfg_scale`,
`use_mean`, each the run's own unless the setting names it) on the
structure benchmark (--num captions per split, the evaluator's fixed
sampling seed). Runs named `<name>_s<seed>` (a sweep's) pool into one row
per name and setting: mean ± std over their seeds, so a setting's gain is
read against the spread of seeds.

Scores are cached per run (`sampler_<num>.json`, keyed by the setting's
resolved values and the checkpoint's step): re-running with another setting
scores only that one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time

from absl import flags

from txt2img_jax import cli
from txt2img_jax.utils import reporting
from txt2img_jax.utils import runfiles
from experiments import common
from experiments import sweep

# The sampler's fields a setting may change, with their types.
FIELDS = {"steps": int, "method": str, "cfg_scale": float, "use_mean": bool}
DEFAULT_SETTINGS = (
    "the run's:",
    "Euler 1 step:steps=1",
    "Euler 5 steps:steps=5",
    "Heun, the run's steps:method=heun",
)
COLUMNS = (
    ("eval/object_acc", "object_acc (test)"),
    ("eval/shape_acc", "shape_acc (test)"),
    ("heldout/object_acc", "object_acc (held-out)"),
    ("heldout/shape_acc", "shape_acc (held-out)"),
    ("eval/mosaic", "mosaic (test)"),
)


def parse_setting(text: str) -> tuple[str, dict]:
  """'label:steps=1,method=heun' -> ('label', {'steps': 1, 'method': 'heun'})."""
  label, out = sweep.parse_variant(text)
  for key, value in out.items():
    if key not in FIELDS:
      raise ValueError(
          f"setting {label!r}: {key!r} is not one of " f"{', '.join(FIELDS)}"
      )
    if FIELDS[key] is float and type(value) is int:
      out[key] = value = float(value)
    if not isinstance(value, FIELDS[key]) or (
        FIELDS[key] is int and isinstance(value, bool)
    ):
      raise ValueError(
          f"setting {label!r}: {key}={value!r} is not "
          f"{FIELDS[key].__name__}"
      )
  return label, out


def resolved(sample_config, setting: dict) -> dict:
  """The setting with the run's own values filled in (the cache key)."""
  return {
      "steps": int(setting.get("steps", sample_config.num_steps)),
      "method": str(setting.get("method", sample_config.method)),
      "cfg_scale": float(setting.get("cfg_scale", sample_config.cfg_scale)),
      "use_mean": bool(setting.get("use_mean", sample_config.use_mean)),
  }


def family(workdir: str) -> tuple[str, int | None]:
  """('workdirs/sweep/restart.py', 0) for workdirs/sweep/restart.py_s0."""
  path = os.path.normpath(workdir)
  m = re.fullmatch(r"(.*)_s(\d+)", path)
  return (m.group(1), int(m.group(2))) if m else (path, None)


def score_run(
    workdir: str, settings: list[tuple[str, dict]], num: int
) -> dict[str, dict]:
  """{label: summary (+ 'seconds')} for one run, from its cache where it can."""
  from txt2img_jax.train import run as run_lib  # Heavy imports only when scoring.
  from txt2img_jax.train import checkpoint_files
  from txt2img_jax.evaluation import structure

  path = os.path.join(workdir, f"sampler_{num}.json")
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  _, step = checkpoint_files.resolve_checkpoint(workdir)
  run, own, evaluator, out = None, None, None, {}
  for label, setting in settings:
    if run is None:
      run = run_lib.load_run(workdir)
      run.config.eval.num = num
      # The run's own sampler, before any setting changes run.config.
      own = run.config.sample.copy_and_resolve_references()
    key = json.dumps(resolved(own, setting), sort_keys=True)
    hit = cache.get(key)
    if hit is None or hit["step"] != step:
      if evaluator is None:
        evaluator = structure.Evaluator(
            run.config,
            run.workdir,
            run.builder,
            run.text,
            run.generate,
            run.frozen,
            run.stats,
        )
      r = json.loads(key)
      run.config.sample.update(
          num_steps=r["steps"],
          method=r["method"],
          cfg_scale=r["cfg_scale"],
          use_mean=r["use_mean"],
      )
      t0 = time.perf_counter()
      summary = evaluator.benchmark(run.ema_params, num=num)
      summary["seconds"] = time.perf_counter() - t0
      hit = cache[key] = {"step": step, "summary": summary}
      runfiles.write_json(workdir, os.path.basename(path), cache)
    out[label] = hit["summary"]
  return out


def table(results: dict[str, dict[str, dict]], settings) -> str:
  """One row per (run family, setting); `results` is {workdir: score_run}."""
  families: dict[str, list[str]] = {}
  for workdir in results:
    families.setdefault(family(workdir)[0], []).append(workdir)
  head = (
      ["runs", "setting", "seeds"]
      + [name for _, name in COLUMNS]
      + ["seconds (both splits)"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, workdirs in families.items():
    for label, _ in settings:
      rows = [results[w][label] for w in workdirs]
      cells = [f"`{name}`", label, str(len(rows))]
      cells += [sweep.fmt([r[key] for r in rows]) for key, _ in COLUMNS]
      cells.append(sweep.fmt([r["seconds"] for r in rows]))
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  reporting.quiet_orbax()
  settings = [parse_setting(s) for s in (f.setting or DEFAULT_SETTINGS)]
  labels = [label for label, _ in settings]
  if len(set(labels)) != len(labels):
    raise ValueError(f"two settings share a label: {labels}")
  results = {}
  for workdir in f.workdir:
    results[workdir] = score_run(workdir, settings, f.num)
    text = table(results, settings)
    print(text, flush=True)
  if f.out:
    command = " ".join(
        ["python -m experiments.sampler"]
        + [f"--workdir={w}" for w in f.workdir]
        + [shlex.quote(f"--setting={s}") for s in f.setting or ()]
        + [f"--num={f.num}", f"--out={f.out}"]
    )
    common.write_table(f.out, command, text)
    print(f"wrote {f.out}")


if __name__ == "__main__":
  flags.DEFINE_multi_string("workdir", None, "A trained run (repeatable).")
  flags.DEFINE_multi_string(
      "setting",
      None,
      "'label:field=value,...' with fields "
      f"{', '.join(FIELDS)} (repeatable; default: "
      f"{'; '.join(DEFAULT_SETTINGS)}).",
  )
  flags.DEFINE_integer("num", 500, "Captions per split.")
  flags.DEFINE_string("out", None, "Also write the table here (markdown).")
  cli.run(main, required=["workdir"])
