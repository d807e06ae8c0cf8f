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

import json
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image, ImageDraw

from txt2img_jax import cli
from txt2img_jax.objectives import flow
from txt2img_jax.utils import paths
from txt2img_jax.utils import reporting
from txt2img_jax.data import tokenizer as tokenizer_lib

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


def prompt_changes(tokenizer, prompts, max_len: int) -> list[str]:
  """What the run's tokenizer does to each prompt that the user should know:
  words it does not know (they become [UNK]) and text cut at max_len."""
  lines = []
  for i, prompt in enumerate(prompts):
    enc = tokenizer(
        prompt,
        add_special_tokens=False,
        verbose=False,
        return_offsets_mapping=True,
    )
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    specials = len(tokenizer("", verbose=False)["input_ids"])  # BOS/EOS.
    room = max_len - specials
    if len(ids) > room:
      lines.append(
          f"prompt {i + 1} is cut to the run's {max_len} tokens; "
          f"dropped: {prompt[spans[room][0]:]!r}"
      )
    unk = tokenizer.unk_token_id
    unknown = [prompt[a:b] for t, (a, b) in zip(ids, spans) if t == unk]
    if unk is not None and unknown:
      lines.append(
          f"prompt {i + 1}: not in the run's vocabulary, drawn as "
          f"[UNK]: {', '.join(repr(w) for w in unknown)}"
      )
  return lines


def prompt_grid(images: np.ndarray, prompts, scale: int) -> Image.Image:
  s = images.shape[1] * scale
  text_h = 30
  width = max(s, 200)
  canvas = Image.new(
      "RGB", (len(images) * (width + 4) + 4, s + text_h + 8), (255, 255, 255)
  )
  draw = ImageDraw.Draw(canvas)
  for i, (img, p) in enumerate(zip(images, prompts)):
    x = 4 + i * (width + 4)
    tile = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    canvas.paste(tile.resize((s, s), Image.NEAREST), (x, 4))
    words, lines, line = p.split(), [], ""
    for w in words:
      if line and len(line) + len(w) + 1 > width // 6:
        lines.append(line)
        line = w
      else:
        line = f"{line} {w}".strip()
    lines.append(line)
    draw.multiline_text((x, s + 6), "\n".join(lines[:3]), fill=(0, 0, 0))
  return canvas


def read_prompts(path: str) -> list[str]:
  """The prompts of a text file (local or a bucket URL), one a line."""
  try:
    if not paths.isfile(path):
      raise cli.UserError(f"--prompts_file={path!r}: no such file")
    text = paths.read_bytes(path).decode("utf-8")
  except OSError as e:
    raise cli.UserError(f"--prompts_file={path!r}: {e.strerror or e}") from e
  except UnicodeDecodeError as e:
    raise cli.UserError(f"--prompts_file={path!r} is not UTF-8 text") from e
  return [line.strip() for line in text.splitlines() if line.strip()]


def save_image(image: Image.Image, path: str) -> None:
  """`image` written to `path` (local or a bucket URL) whole, in the format
  its extension names (PNG where it names none PIL knows)."""
  ext = path[path.rfind(".") :].lower() if "." in paths.basename(path) else ""
  fmt = Image.registered_extensions().get(ext, "PNG")
  paths.write_with(path, image.save, format=fmt)


def write_samples(run, prompts, num_per_prompt, out_dir, settings, seed):
  """PNGs + index.jsonl, batch by batch; returns how many were written.

  `out_dir` may be a bucket URL. index.jsonl is written at the end, whole:
  it is there only when every image is."""
  paths.makedirs(out_dir)
  rows = [
      (p, i, k) for i, p in enumerate(prompts) for k in range(num_per_prompt)
  ]
  bs = int(run.config.eval.batch_size)
  digits = max(5, len(str(len(rows) - 1)))
  index = []
  done = 0
  for start in range(0, len(rows), bs):
    chunk = rows[start : start + bs]
    ids, mask = tokenizer_lib.tokenize(
        run.text.tokenizer, [p for p, _, _ in chunk], run.config.data.max_len
    )
    images = run.images(ids, mask, seed=seed, offset=start, **settings)
    for n, (img, (prompt, i, k)) in enumerate(zip(images, chunk)):
      name = f"{start + n:0{digits}d}.png"
      u8 = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
      save_image(Image.fromarray(u8), paths.join(out_dir, name))
      row = dict(
          file=name,
          prompt=prompt,
          prompt_index=i,
          sample=k,
          seed=seed,
          **settings,
          step=run.step,
          workdir=run.workdir,
      )
      row["steps"] = row.pop("num_steps")
      index.append(json.dumps(row) + "\n")
    done += len(chunk)
    print(f"sample: {done}/{len(rows)} images", file=sys.stderr, flush=True)
  # Complete, or not there (write_text is whole or nothing).
  paths.write_text(paths.join(out_dir, "index.jsonl"), "".join(index))
  return done


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
