"""Images from captions with a trained run's EMA parameters.

python -m txt2img_jax.sample --workdir=W --prompt "a large red circle in the
    center" [--prompt ...] --out x.png [--method heun --steps 50 --cfg_scale 3]

For many prompts (FID on your own prompts, any downstream use), one PNG per
image at the run's resolution and an index, drawn in batches of the run's
eval.batch_size and written as they come (no image list held in memory):

python -m txt2img_jax.sample --workdir=W --prompts_file=prompts.txt \
    --num_per_prompt=4 --nouse_mean --out_dir=DIR

DIR/index.jsonl has a row per image: file, prompt, prompt_index, sample (0..N-1),
seed, method, steps, cfg_scale, use_mean, step (the checkpoint), workdir. The
same command draws the same images.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from txt2img_jax import cli
from txt2img_jax.objectives import flow
from txt2img_jax.utils import reporting
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.evaluation.sample_files import prompt_changes
from txt2img_jax.evaluation.sample_files import prompt_grid
from txt2img_jax.evaluation.sample_files import read_prompts
from txt2img_jax.evaluation.sample_files import save_image
from txt2img_jax.evaluation.sample_files import write_samples

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "Caption(s) to draw.")
_OUT = flags.DEFINE_string(
    "out",
    "samples.png",
    "Output PNG (a grid; with --out_dir only when given).",
)
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", None, "A text file of prompts, one a line (blank skipped)."
)
_NUM_PER_PROMPT = flags.DEFINE_integer(
    "num_per_prompt", 1, "Images per prompt (each its own z_text draw)."
)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Write one PNG per image and index.jsonl here."
)
_METHOD = flags.DEFINE_enum(
    "method", None, list(flow.SAMPLERS), "ODE sampler (default: the run's)."
)
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: run's).")
_CFG = flags.DEFINE_float(
    "cfg_scale",
    None,
    "Classifier-free guidance scale " "(default: the run's; 1 = no guidance).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the z_text draw.")
_USE_MEAN = flags.DEFINE_bool(
    "use_mean",
    None,
    "Start from the head's mean " "instead of a draw (default: the run's).",
)
_SCALE = flags.DEFINE_integer("scale", 4, "Pixel upscaling in the PNG.")
_ALLOW_DOWNLOAD = flags.DEFINE_bool(
    "allow_download",
    False,
    "Let the hub models named in the run's config.json be fetched (default: "
    "the local Hugging Face cache only).",
)


def main(argv):
  del argv
  from txt2img_jax.train import run as run_lib

  reporting.quiet_orbax()
  prompts = list(_PROMPTS.value or [])
  if _PROMPTS_FILE.value:
    prompts += read_prompts(_PROMPTS_FILE.value)
    if not prompts:
      raise cli.UserError(f"--prompts_file={_PROMPTS_FILE.value!r} is empty")
  if not prompts:
    raise app.UsageError("give at least one --prompt or a --prompts_file")
  empty = [i for i, p in enumerate(prompts) if not p.strip()]
  if empty:
    raise cli.UserError(f"--prompt number {empty[0] + 1} is empty")
  if _NUM_PER_PROMPT.value < 1:
    raise cli.UserError("--num_per_prompt must be >= 1")
  run = run_lib.load_run(
      _WORKDIR.value, with_data=False, allow_download=_ALLOW_DOWNLOAD.value
  )
  for line in prompt_changes(
      run.text.tokenizer, prompts, run.config.data.max_len
  ):
    logging.warning("%s", line)
    print(f"warning: {line}", file=sys.stderr)
  s = run.config.sample
  settings = dict(
      method=_METHOD.value or s.method,
      num_steps=_STEPS.value or s.num_steps,
      cfg_scale=float(s.cfg_scale if _CFG.value is None else _CFG.value),
      use_mean=bool(s.use_mean if _USE_MEAN.value is None else _USE_MEAN.value),
  )
  if _NUM_PER_PROMPT.value > 1 and settings["use_mean"]:
    print(
        "warning: with use_mean every image of a prompt is the same (the ODE "
        "starts from the head's mean); --nouse_mean draws z_text",
        file=sys.stderr,
    )
  if _OUT_DIR.value:
    n = write_samples(
        run,
        prompts,
        _NUM_PER_PROMPT.value,
        _OUT_DIR.value,
        settings,
        _SEED.value,
    )
    print(
        f"wrote {n} images and index.jsonl to {_OUT_DIR.value} (step {run.step})"
    )
    if not flags.FLAGS["out"].present:
      return
  grid_prompts = [p for p in prompts for _ in range(_NUM_PER_PROMPT.value)]
  ids, mask = tokenizer_lib.tokenize(
      run.text.tokenizer, grid_prompts, run.config.data.max_len
  )
  images = run.images(ids, mask, seed=_SEED.value, **settings)
  save_image(prompt_grid(images, grid_prompts, _SCALE.value), _OUT.value)
  print(f"wrote {_OUT.value} ({len(images)} images, step {run.step})")


if __name__ == "__main__":
  cli.run(main, required=["workdir"])
