"""The presets compiled for TPU slices: docs/performance.md's table.

Run from a venv with the `tpu` extra (libtpu), from the repo root:

  python -m experiments.aot_table [--out=workdirs/aot_table] [--only=ROW]
      [--compile=False]

Each row is one `python -m txt2img_jax.aot` run (the command is printed
beside it); its JSON is kept under --out, so a second run only compiles the
rows it has not got. Prints the markdown table.
"""

from __future__ import annotations

import json
import os
import re

from absl import app, flags

from experiments import common
from txt2img_jax.train import aot, aot_max_batch, aot_tpu

_OUT = flags.DEFINE_string("out", "workdirs/aot_table", "Where rows go.")
_ONLY = flags.DEFINE_string("only", "", "Compile this row's name only.")
_COMPILE = flags.DEFINE_bool(
    "compile", True, "Compile missing rows (False: print the rows kept)."
)

# The frozen networks of coco256 by shape alone (configs/frozen/README.md).
COCO = {
    "autoencoder.path": "configs/frozen/sd_vae",
    "text_encoder.name": "configs/frozen/clip_l_text",
}
REMAT = {"flow.remat": "full"}
FSDP = {"mesh.preset": "fsdp"}

# name -> (recipe, topology, overrides, find the largest batch)
ROWS = {
    "b2-v5e4-dp": ("perf_b2", "v5e:2x2", {}, False),
    "b2-v5e16-dp": ("perf_b2", "v5e:4x4", {}, True),
    "xl2-v5e64-dp": ("perf_xl2", "v5e:8x8", {}, False),
    "xl2-v5e64-fsdp": ("perf_xl2", "v5e:8x8", FSDP, False),
    "coco256-v5e64-fsdp": ("coco256", "v5e:8x8", {**COCO, **FSDP}, True),
    "coco256-v5e64-fsdp-remat": (
        "coco256",
        "v5e:8x8",
        {**COCO, **FSDP, **REMAT},
        True,
    ),
    "coco256-v5p64-dp": ("coco256", "v5p:4x4x4", COCO, False),
    "coco256-v6e64-fsdp": ("coco256", "v6e:8x8", {**COCO, **FSDP}, False),
    "coco512-v5p64-fsdp-remat": (
        "coco256",
        "v5p:4x4x4",
        {**COCO, **FSDP, **REMAT, "data.image_size": 512, "batch_size": 256},
        False,
    ),
}


def _set(config, key: str, value) -> None:
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def command(name: str) -> str:
  recipe, topology, overrides, find = ROWS[name]
  flags_ = "".join(f" --config.{k}={v}" for k, v in overrides.items())
  return (
      f"python -m txt2img_jax.aot --config=configs/{recipe}.py "
      f"--topology={topology}{flags_}" + (" --find_max_batch" if find else "")
  )


def compile_row(name: str) -> dict:
  recipe, topology, overrides, find = ROWS[name]
  config = common.recipe(recipe)
  for k, v in overrides.items():
    _set(config, k, v)
  devices = aot_tpu.topology_devices(topology)
  r = aot.report(config, devices, topology)
  if find:
    r["max_batch"] = aot_max_batch.find_max_batch(config, devices)
  return r


def _gib(n) -> str:
  return f"{n / aot_tpu.GiB:.1f}"


def table_row(name: str, r: dict) -> str:
  _, topology, overrides, _ = ROWS[name]
  what = (
      f"{r['config']} {r.get('latent_shape', '')}"
      f"{' 512 px' if overrides.get('data.image_size') == 512 else ''}"
  )
  layout = r["preset"] + (" + remat" if "flow.remat" in overrides else "")
  cells = [name, what, topology, layout, str(r["batch_size"])]
  if not r["fits"]:
    over = re.search(r"capacity by ([\d.]+\w?)", r["error"])
    verdict = f"does not fit (over by {over.group(1)})" if over else "no"
    return "| " + " | ".join(cells + [verdict] + [""] * 5) + " |"
  m = r["memory"]
  traffic = sum(v["bytes"] for v in r.get("collectives", {}).values())
  best = r.get("max_batch")
  cells += [
      f"{_gib(m['peak'])} GiB ({r['hbm_used']:.0%})",
      str(best["max_batch_size"]) if best else "",
      f"{r['step_time_s'] * 1e3:.0f}" if "step_time_s" in r else "",
      f"{r['mfu']:.0%}" if "mfu" in r else "",
      f"{traffic / aot_tpu.GiB:.1f}" if traffic else "",
      f"{r['compile_s']:.0f}",
  ]
  return "| " + " | ".join(cells) + " |"


HEADER = (
    "| row | config, latent | topology | layout | batch | peak HBM per chip "
    "| max batch | cost model ms/step | MFU | collectives GiB/chip/step "
    "| compile s |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  names = [_ONLY.value] if _ONLY.value else list(ROWS)
  lines = [HEADER]
  for name in names:
    path = os.path.join(_OUT.value, f"{name}.json")
    if not os.path.exists(path) and not _COMPILE.value:
      continue
    if not os.path.exists(path):
      print(f"compiling {name}: {command(name)}", flush=True)
      r = compile_row(name)
      with open(path, "w") as f:
        json.dump(r, f, indent=1, default=str)
    with open(path) as f:
      lines.append(table_row(name, json.load(f)))
  print("\n".join(lines))
  print()
  for name in names:
    print(f"{name}: {command(name)}")


if __name__ == "__main__":
  app.run(main)
