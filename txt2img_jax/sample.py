"""Images from captions with a trained run's EMA parameters.

python -m txt2img_jax.sample --workdir=W --prompt "a large red circle in the
    center" [--prompt ...] --out x.png [--method heun --steps 50 --cfg_scale 3]
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image, ImageDraw

from txt2img_jax import cli
from txt2img_jax.objectives import flow
from txt2img_jax.utils import reporting
from txt2img_jax.data import tokenizer as tokenizer_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "Caption(s) to draw.")
_OUT = flags.DEFINE_string("out", "samples.png", "Output PNG (a grid).")
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


def generate_images(
    run, prompts, *, method, num_steps, cfg_scale, use_mean, seed=0
) -> np.ndarray:
  ids, mask = tokenizer_lib.tokenize(
      run.text.tokenizer, prompts, run.config.data.max_len
  )
  images = run.generate(
      run.ema_params,
      run.frozen,
      run.stats,
      ids,
      mask,
      jax.random.PRNGKey(seed),
      num_steps=num_steps,
      method=method,
      cfg_scale=float(cfg_scale),
      use_mean=bool(use_mean),
  )
  return np.asarray(jax.device_get(images))


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


def main(argv):
  del argv
  from txt2img_jax.train import run as run_lib

  reporting.quiet_orbax()
  if not _PROMPTS.value:
    raise app.UsageError("give at least one --prompt")
  empty = [i for i, p in enumerate(_PROMPTS.value) if not p.strip()]
  if empty:
    raise cli.UserError(f"--prompt number {empty[0] + 1} is empty")
  run = run_lib.load_run(
      _WORKDIR.value, with_data=False, allow_download=_ALLOW_DOWNLOAD.value
  )
  for line in prompt_changes(
      run.text.tokenizer, _PROMPTS.value, run.config.data.max_len
  ):
    logging.warning("%s", line)
    print(f"warning: {line}", file=sys.stderr)
  s = run.config.sample
  images = generate_images(
      run,
      _PROMPTS.value,
      method=_METHOD.value or s.method,
      num_steps=_STEPS.value or s.num_steps,
      cfg_scale=s.cfg_scale if _CFG.value is None else _CFG.value,
      use_mean=s.use_mean if _USE_MEAN.value is None else _USE_MEAN.value,
      seed=_SEED.value,
  )
  prompt_grid(images, _PROMPTS.value, _SCALE.value).save(_OUT.value)
  print(f"wrote {_OUT.value} ({len(images)} images, step {run.step})")


if __name__ == "__main__":
  cli.run(main, required=["workdir"])
