"""What the `sample` command writes and reads, as a library: a grid of
captioned images, one file per image with an `index.jsonl`, a prompts file,
and the warnings for prompts the run's tokenizer changes. Every path may be
local or a bucket URL (`utils/paths`)."""

from __future__ import annotations

import json
import sys

import numpy as np
from PIL import Image, ImageDraw

from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.utils import paths
from txt2img_jax.utils.errors import UserError


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
      raise UserError(f"--prompts_file={path!r}: no such file")
    text = paths.read_bytes(path).decode("utf-8")
  except OSError as e:
    raise UserError(f"--prompts_file={path!r}: {e.strerror or e}") from e
  except UnicodeDecodeError as e:
    raise UserError(f"--prompts_file={path!r} is not UTF-8 text") from e
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
