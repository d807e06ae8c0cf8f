"""Every documented command, run as a user types it (a subprocess), and the
one-line errors a user gets for a bad command line.

The commands are read from the fenced ```bash blocks of README.md and
docs/*.md, so a documented command cannot rot silently: a new one is tested
as soon as it is written down. Each is shrunk for CI the way a user would
shrink it: `:tiny` configs, and the flags in `SHRINK` appended for the
commands whose defaults take minutes (absl keeps the last value of a flag).
Commands run in a scratch directory that has the repo's `configs/` in it,
so the documented relative paths (`workdirs/...`, `x.png`) land there.

Each subprocess compiles its own step; they share jax's persistent
compilation cache, which the first run fills.
"""

from __future__ import annotations

import importlib
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md")] + sorted(
    glob.glob(os.path.join(REPO, "docs", "*.md"))
)

# Appended to a documented command of this module to make it CI-sized.
SHRINK = {
    "evaluate": ["--num=8"],
    "perf": ["--steps=2"],
    "health overfit": ["--steps=4", "--subset=16", "--recon_num=4"],
    "health latents": ["--num=8"],
    "health mosaic": ["--num=8"],
    "experiments.heads_ablation": [
        "--config_variant=tiny",
        "--steps=4",
        "--seeds=0",
        "--num=4",
        "--lrs=2e-3",
        "--heads=grid_query",
    ],
    "experiments.restart_trial": [
        "--config_variant=tiny",
        "--base_steps=4",
        "--restart_steps=2",
        "--num=4",
    ],
    "experiments.binding": ["--num=16"],
    "experiments.sampler": ["--num=8"],
    "experiments.torch_compare": [
        "--sizes=default",
        "--repeats=1",
        "--round_steps=1",
    ],
    "experiments.sweep": [
        "--config_variant=tiny",
        "--steps=4",
        "--seeds=0",
        "--num=4",
        "--limit=1",
    ],
    "experiments.leak": [
        "--config_variant=tiny",
        "--steps=4",
        "--seeds=0",
        "--num=4",
        "--limit=1",
    ],
    "experiments.fid_cost": [
        "--images=4",
        "--image_size=16",
        "--sizes=32",
        "--batch_size=4",
    ],
    "experiments.digits": [
        "--config_variant=tiny",
        "--seeds=0",
        "--rows=before,noise",
    ],
}
# Experiments that read trained runs (a sweep's, in the docs): in CI they
# read the setup's restart run instead.
PROBES = {
    "experiments.binding": "--workdir=workdirs/restart",
    "experiments.sampler": "--workdir=workdirs/restart",
    "experiments.digits": "--workdir=workdirs/folder",
}
# The experiments that train runs of their own (under --workroot).
TRAINING_EXPERIMENTS = (
    "experiments.heads_ablation",
    "experiments.restart_trial",
    "experiments.sweep",
    "experiments.leak",
    "experiments.digits",
)
# Runs the documented commands read from (base is diagnose's subject).
SETUP = [
    "python -m txt2img_jax.main --config=configs/restart.py",
    "python -m txt2img_jax.main --config=configs/base.py",
    "python -m txt2img_jax.main --config=configs/folder.py "
    "--config.data.path=my_images",
]


def documented_commands() -> list[tuple[str, str]]:
  """(file, command) for every `python -m txt2img_jax...` (or a research
  script's, `python -m experiments...`) in a bash block;
  a command written in several places, or that shrinks to one already
  found (`restart.py` and `restart.py:tiny`), is run once (its first place)."""
  found, seen = [], set()
  for path in DOCS:
    with open(path) as f:
      text = f.read()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
      for line in block.replace("\\\n", " ").splitlines():
        line = " ".join(line.split())
        extra, command = split_env(line)
        if not command.startswith(
            ("python -m txt2img_jax", "python -m experiments.")
        ):
          continue
        key = (tuple(sorted(extra.items())), tuple(shrink(line)))
        if key not in seen:
          seen.add(key)
          found.append((os.path.relpath(path, REPO), line))
  return found


def split_env(line: str) -> tuple[dict[str, str], str]:
  """`NAME=value ... python -m ...` -> ({NAME: value}, "python -m ...")."""
  extra = {}
  while m := re.match(r"([A-Z_][A-Z0-9_]*)=(\S*) ", line):
    extra[m.group(1)] = m.group(2)
    line = line[m.end() :]
  return extra, line


def command_name(argv: list[str]) -> str:
  module = argv[2].removeprefix("txt2img_jax.")
  if module == "health":
    return f"health {argv[3]}"
  return module


def shrink(command: str) -> list[str]:
  # "[--num=500]" in a synopsis is an optional flag: give it.
  argv = [a.strip("[]") for a in shlex.split(split_env(command)[1])]
  name = command_name(argv)
  out = []
  for a in argv:
    # A config with its own variant ("restart.py:800") keeps it, shrunk.
    m = re.fullmatch(r"--config=(configs/\w+\.py)(?::([\w,]+))?", a)
    if name in PROBES and a.startswith("--workdir="):
      continue  # Runs of a sweep: probe the setup's run instead.
    parts = (m.group(2) or "").split(",") if m else []
    variant = ",".join([v for v in parts if v and v != "tiny"] + ["tiny"])
    out.append(f"--config={m.group(1)}:{variant}" if m else a)
  if name in PROBES:
    out.append(PROBES[name])
  return [sys.executable] + out[1:] + SHRINK.get(name, [])


def run(
    argv: list[str], cwd: str, env: dict, timeout: int = 600
) -> subprocess.CompletedProcess:
  return subprocess.run(
      argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def write_image_folder(path, num: int = 24) -> None:
  """A user's image folder (the README's `my_images`): shapes renders as
  PNGs with a metadata.jsonl, two captions per image."""
  from PIL import Image
  from txt2img_jax.data import shapes

  os.makedirs(path)
  with open(os.path.join(path, "metadata.jsonl"), "w") as f:
    for i in range(num):
      ex = shapes.example(0, "train", i, 32)
      Image.fromarray(ex["image"]).save(os.path.join(path, f"{i:03d}.png"))
      f.write(
          json.dumps(
              {
                  "file_name": f"{i:03d}.png",
                  "text": [ex["caption"], ex["caption"].upper()],
              }
          )
          + "\n"
      )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, data_dir):
  """A user's directory with configs/ in it, the documented setup runs done."""
  root = tmp_path_factory.mktemp("user")
  os.symlink(os.path.join(REPO, "configs"), root / "configs")
  write_image_folder(str(root / "my_images"))
  env = dict(os.environ)
  env.update(
      PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
      TXT2IMG_DATA_DIR=data_dir,
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  # Side by side: each spends much of its time in one-threaded work
  # (imports, tracing, XLA's passes), so together they take less wall time.
  procs = [
      (
          command,
          subprocess.Popen(
              shrink(command),
              cwd=str(root),
              env=env,
              stdout=subprocess.PIPE,
              stderr=subprocess.PIPE,
              text=True,
          ),
      )
      for command in SETUP
  ]
  for command, proc in procs:
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, (command, stderr[-3000:])
  return str(root), env


def test_documented_commands_are_found():
  commands = [c for _, c in documented_commands()]
  # The README's own lines, including the overrides that used to crash.
  assert any("--config.total_steps=" in c for c in commands)
  assert any("--config.init_from=workdirs/base" in c for c in commands)
  for module in (
      "main",
      "sample",
      "evaluate",
      "diagnose",
      "health",
      "perf",
      "prepare",
  ):
    assert any(
        c.startswith(f"python -m txt2img_jax.{module} ") for c in commands
    ), module


def test_shrink_keeps_a_config_variant():
  main = "python -m txt2img_jax.main "
  assert shrink(main + "--config=configs/restart.py")[3] == (
      "--config=configs/restart.py:tiny"
  )
  assert shrink(main + "--config=configs/restart.py:800")[3] == (
      "--config=configs/restart.py:800,tiny"
  )
  assert shrink(main + "--config=configs/folder.py:tiny")[3] == (
      "--config=configs/folder.py:tiny"
  )
  restart = importlib.import_module("configs.restart")
  assert restart.get_config("800,tiny").total_steps == 6


def _promised_files(argv: list[str]) -> list[str]:
  """The files a command says it writes, from its own arguments."""
  flags = dict(
      a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a
  )
  name = command_name(argv)
  if name == "prepare":
    return []
  if name == "main":
    config = os.path.basename(flags["config"]).split(".")[0]
    workdir = flags.get("workdir", os.path.join("workdirs", config))
    return [
        os.path.join(workdir, f)
        for f in ("config.json", "metrics.jsonl", "samples/latest.png")
    ]
  if name == "sample":
    out = flags.get("out") or (
        argv[argv.index("--out") + 1] if "--out" in argv else "samples.png"
    )
    return [out]
  if name == "evaluate":
    return [flags["json"]] if "json" in flags else []
  if name == "diagnose":
    return [
        os.path.join(
            flags.get("out_dir") or os.path.join(flags["workdir"], "diagnose"),
            "report.json",
        )
    ]
  if name == "experiments.digits" and argv[3] != "table":
    return []  # write makes a folder (--dir), curves prints.
  if name.startswith("experiments."):
    return [flags["out"]] if "out" in flags else []
  return []


@pytest.mark.parametrize(
    "source,command",
    documented_commands(),
    ids=lambda x: x if "python" in x else None,
)
def test_documented_command_runs(scratch, source, command):
  cwd, env = scratch
  argv = shrink(command)
  # Experiments write their tables into docs/ by default: keep them here.
  extra, bare = split_env(command)
  name = command_name(shlex.split(bare))
  if name.startswith("experiments."):
    argv += [f"--out=exp_{name}.md"]
    if name in TRAINING_EXPERIMENTS:  # Their runs, here too.
      argv += ["--workroot=workdirs/exp"]
  r = run(argv, cwd, {**env, **extra})
  ok = (0, 1) if name.startswith("health") else (0,)  # 1 is a FAIL verdict.
  assert r.returncode in ok, (source, command, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  if name.startswith("health"):
    assert re.search(r"\b(PASS|FAIL)\b", r.stdout), r.stdout
  for path in _promised_files(argv):
    assert os.path.exists(os.path.join(cwd, path)), (command, path)


def test_override_changes_the_run(scratch):
  """The issue's own line: an override reaches the config of the run."""
  cwd, env = scratch
  r = run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.main",
          "--config=configs/restart.py:tiny",
          "--workdir=workdirs/x1",
          "--config.total_steps=4",
          "--config.head.kind=mlp_conv",
      ],
      cwd,
      env,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(cwd, "workdirs/x1/config.json")) as f:
    saved = json.load(f)
  assert saved["total_steps"] == 4 and saved["head"]["kind"] == "mlp_conv"
  rows = (
      open(os.path.join(cwd, "workdirs/x1/metrics.jsonl")).read().splitlines()
  )
  assert json.loads(rows[-1])["step"] == 4


def test_sample_reports_what_it_changes_in_a_prompt(scratch):
  cwd, env = scratch
  r = run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.sample",
          "--workdir=workdirs/restart",
          "--out=warned.png",
          "--prompt=a purple dragon in the center",
      ],
      cwd,
      env,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "'purple', 'dragon'" in r.stderr and "[UNK]" in r.stderr
  r = run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.sample",
          "--workdir=workdirs/restart",
          "--prompt= ",
      ],
      cwd,
      env,
  )
  assert r.returncode == 1 and "--prompt number 1 is empty" in r.stderr


BROKEN_CONFIG = "def get_config(:\n"

ERRORS = [
    # (name, argv after `python -m`, what the one line must say)
    (
        "unknown field",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.no_such_field=1",
        ],
        "no_such_field",
    ),
    (
        "wrong type",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.batch_size=abc",
        ],
        "batch_size=abc",
    ),
    (
        "missing config",
        ["txt2img_jax.main", "--config=configs/nope.py"],
        "No such file",
    ),
    (
        "broken config",
        ["txt2img_jax.main", "--config=broken.py"],
        "SyntaxError",
    ),
    (
        "unknown variant",
        ["txt2img_jax.main", "--config=configs/restart.py:huge"],
        "huge",
    ),
    (
        "bad value",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.batch_size=0",
        ],
        "batch_size",
    ),
    ("no config", ["txt2img_jax.main"], "--config"),
    (
        "negative steps",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.total_steps=-1",
        ],
        "total_steps",
    ),
    (
        "odd image size",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.data.image_size=30",
        ],
        "image_size=30",
    ),
    (
        "patch size",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.flow.patch_size=3",
        ],
        "patch_size=3",
    ),
    (
        "nan lr",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.optim.groups.flow.lr=nan",
        ],
        "lr=nan",
    ),
    (
        "unknown XLA option",
        [
            "txt2img_jax.main",
            "--config=configs/restart.py:tiny",
            "--config.xla_cpu_options=xla_nope=1",
        ],
        "xla_nope",
    ),
    (
        "folder without path",
        ["txt2img_jax.main", "--config=configs/folder.py:tiny"],
        "data.path",
    ),
    (
        "folder not there",
        [
            "txt2img_jax.prepare",
            "--config=configs/folder.py:tiny",
            "--config.data.path=nowhere",
        ],
        "nowhere",
    ),
    (
        "sample, no checkpoint",
        ["txt2img_jax.sample", "--workdir=configs", "--prompt=a red circle"],
        "config.json",
    ),
    (
        "sample, missing workdir",
        ["txt2img_jax.sample", "--workdir=nowhere", "--prompt=a red circle"],
        "nowhere",
    ),
    (
        "evaluate, missing workdir",
        ["txt2img_jax.evaluate", "--workdir=nowhere"],
        "nowhere",
    ),
    (
        "diagnose, missing workdir",
        ["txt2img_jax.diagnose", "--workdir=nowhere"],
        "nowhere",
    ),
    (
        "health, unknown field",
        [
            "txt2img_jax.health",
            "latents",
            "--config=configs/restart.py:tiny",
            "--config.nope=1",
        ],
        "nope",
    ),
    (
        "perf, missing config",
        ["txt2img_jax.perf", "--config=configs/x.py"],
        "No such file",
    ),
]


@pytest.mark.parametrize("name,args,says", ERRORS, ids=[e[0] for e in ERRORS])
def test_user_error_is_one_line(tmp_path, name, args, says):
  del name
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
  (tmp_path / "broken.py").write_text(BROKEN_CONFIG)
  env = dict(os.environ, PYTHONPATH=REPO)
  r = run([sys.executable, "-m"] + args, str(tmp_path), env)
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [l for l in r.stderr.splitlines() if "error:" in l]
  assert len(errors) == 1, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1] == errors[0]
  assert says in errors[0], errors[0]
  assert not os.path.exists(tmp_path / "workdirs"), "wrote before failing"


def test_debug_shows_the_traceback(tmp_path):
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
  env = dict(os.environ, PYTHONPATH=REPO)
  r = run(
      [
          sys.executable,
          "-m",
          "txt2img_jax.evaluate",
          "--workdir=nowhere",
          "--debug",
      ],
      str(tmp_path),
      env,
  )
  assert r.returncode != 0 and "Traceback" in r.stderr
