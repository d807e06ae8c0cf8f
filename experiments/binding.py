"""Does z_text tell a caption from a changed one? Colour swaps, shape swaps.

  python -m experiments.binding --workdir=workdirs/restart \
      [--workdir=OTHER_RUN ...] [--num=500] [--swap=color|shape] [--out=binding.md]

The default run's samples blend two objects' colours. That can be lost on
the text side (z_text the same for "a red circle ... a blue square" and
"a blue circle ... a red square") or on the flow side (z_text differs, the
flow does not draw the difference). For every two-object caption among the
first --num test examples of a shapes run, its colour swap (the two colour
words trade places, `data/negatives.py`) is embedded too, and the table
gives, from the EMA parameters' posterior means mu:

- `swap_dist`: |mu(caption) - mu(swap)| / |mu(caption)|, how far apart the
  text side puts the two;
- `image_dist`: the same for the image latents of the two captions' images
  (each rendered without jitter, the change applied to its objects): how
  far apart the two images are, the scale swap_dist is read against;
- `tower_pref`: the share of captions whose image the contrastive image
  tower embeds nearer (cosine) to mu(caption) than to mu(swap) (0.5: the
  text side does not tell them apart);
- `latent_pref`: the same with the image latent x1 itself in place of the
  tower's embedding (what the flow starts from vs where it must go);
- `color_acc_2obj`: the structure benchmark's colour accuracy of the
  samples of two-object captions, for the same run and captions, when a
  sweep has scored the run on --num captions (else blank).

`--swap=shape` asks the same of squares and circles (the default run's
remaining failure draws both as one rounded blob): every caption among the
first --num test examples that names a circle or a square has its first
such word changed to the other ("a red circle in the top" -> "a red square
in the top"), one object or two; `shape_acc` is then the benchmark's shape
accuracy of the run on those --num captions, when scored. Is the shape lost
on the text side (z_text alike for both: swap_dist small, latent_pref near
0.5) or in the flow (z_text knows, the samples do not)?
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags
import jax
import numpy as np

from txt2img_jax import cli
from txt2img_jax.utils import reporting
from txt2img_jax.data import negatives
from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib

COLUMNS = {
    "color": (
        "captions",
        "swap_dist",
        "image_dist",
        "tower_pref",
        "latent_pref",
        "color_acc_2obj",
    ),
    "shape": (
        "captions",
        "swap_dist",
        "image_dist",
        "tower_pref",
        "latent_pref",
        "shape_acc",
    ),
}
# The shapes a trained run confuses, and the word each is swapped for.
SHAPE_SWAP = {"circle": "square", "square": "circle"}


def swapped_objects(objects, swap: str):
  """The objects of the changed caption: the two colours traded, or the
  first circle or square made the other (the caption names objects in
  order, so its first such word is the first such object)."""
  if swap == "color":
    a, b = objects
    return [
        dataclasses.replace(a, color=b.color),
        dataclasses.replace(b, color=a.color),
    ]
  out = list(objects)
  for i, o in enumerate(out):
    name = shapes.SHAPES[o.shape]
    if name in SHAPE_SWAP:
      out[i] = dataclasses.replace(
          o, shape=shapes.SHAPES.index(SHAPE_SWAP[name])
      )
      return out
  raise ValueError("no circle or square to change")


def shape_swap(caption: str) -> str | None:
  """The caption with its first circle or square changed to the other."""
  for m in negatives.WORD.finditer(caption):
    if m.group() in SHAPE_SWAP:
      return caption[: m.start()] + SHAPE_SWAP[m.group()] + caption[m.end() :]
  return None


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure(run, num: int, swap: str = "color") -> dict[str, float]:
  """The measures above for a run rebuilt by `run_lib.load_run`; `swap`:
  "color" (two-object colour swaps) or "shape" (circle <-> square)."""
  from txt2img_jax.data import pipeline
  from experiments import common

  c = run.config
  if c.data.name != "shapes":
    raise ValueError(
        f"{run.workdir}: the binding probe needs a shapes run "
        f"(data.name={c.data.name!r})"
    )
  data = pipeline.load_split(
      run.builder,
      "test",
      num,
      tokenizer=run.text.tokenizer,
      max_len=c.data.max_len,
  )
  if swap == "color":
    picked = np.flatnonzero(data["num_objects"] == 2)
    if not len(picked):
      raise ValueError(
          f"no two-object caption among the first {num} test "
          "examples: raise --num"
      )
    captions = [data["caption"][i] for i in picked]
    rng = np.random.default_rng(0)
    swaps = [
        negatives.negative_caption(x, (shapes.COLOR_NAMES,), rng)
        for x in captions
    ]  # Two objects always have two colours.
  elif swap == "shape":
    picked = np.array(
        [i for i, x in enumerate(data["caption"]) if shape_swap(x) is not None],
        np.int64,
    )
    if not len(picked):
      raise ValueError(
          f"no caption with a circle or a square among the "
          f"first {num} test examples: raise --num"
      )
    captions = [data["caption"][i] for i in picked]
    swaps = [shape_swap(x) for x in captions]
  else:
    raise ValueError(f"unknown swap {swap!r}; known: 'color', 'shape'")
  tok = run.text.tokenizer
  mu = common.z_text_mean(
      run, *tokenizer_lib.tokenize(tok, captions, c.data.max_len)
  )
  mu_swap = common.z_text_mean(
      run, *tokenizer_lib.tokenize(tok, swaps, c.data.max_len)
  )
  x1 = ae_lib.encode_latent(
      run.autoencoder,
      run.autoencoder.params,
      data["image"][picked],
      jax.random.PRNGKey(0),
      run.stats,
  )
  emb, _ = run.model.apply({"params": run.ema_params}, x1, method="embed_image")
  a, b = _unit(mu), _unit(mu_swap)

  def prefers(target):
    t = _unit(target)
    return float(np.mean((t * a).sum(1) > (t * b).sum(1)))

  renders = {False: [], True: []}
  for i in picked:
    ex = shapes.example(
        c.data.seed, "test", int(i), c.data.image_size, c.data.jitter_px
    )
    objects = shapes.objects_from_description(ex)
    renders[False].append(shapes.render(objects, c.data.image_size))
    renders[True].append(
        shapes.render(swapped_objects(objects, swap), c.data.image_size)
    )
  x_plain, x_swap = (
      ae_lib.encode_latent(
          run.autoencoder,
          run.autoencoder.params,
          np.stack(renders[k]).astype(np.float32) / 255.0,
          jax.random.PRNGKey(0),
          run.stats,
      )
      for k in (False, True)
  )

  def rel_dist(x, y):  # Mean of |x - y| / |x| over the captions.
    x = np.asarray(x, np.float64).reshape(len(picked), -1)
    y = np.asarray(y, np.float64).reshape(len(picked), -1)
    return float(
        np.mean(np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1))
    )

  out = {
      "captions": float(len(picked)),
      "swap_dist": rel_dist(mu, mu_swap),
      "image_dist": rel_dist(x_plain, x_swap),
      "tower_pref": prefers(emb),
      "latent_pref": prefers(x1),
  }
  scored = os.path.join(run.workdir, f"benchmark_{num}.json")
  if os.path.exists(scored):  # Written by experiments.common.score.
    with open(scored) as f:
      summary = json.load(f).get("summary", {})
    key = COLUMNS[swap][-1]  # The benchmark's accuracy for this change.
    if f"eval/{key}" in summary:
      out[key] = summary[f"eval/{key}"]
  return out


def table(rows: list[tuple[str, dict]], swap: str = "color") -> str:
  columns = COLUMNS[swap]
  lines = [
      "| run | " + " | ".join(columns) + " |",
      "|---|" + "---|" * len(columns),
  ]
  for name, r in rows:
    cells = [
        (
            ""
            if k not in r
            else f"{int(r[k])}"
            if k == "captions"
            else f"{r[k]:.3f}"
        )
        for k in columns
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  from txt2img_jax.train import run as run_lib  # Heavy imports only for the CLI.

  reporting.quiet_orbax()
  rows = []
  for workdir in f.workdir:
    rows.append((workdir, measure(run_lib.load_run(workdir), f.num, f.swap)))
  text = table(rows, f.swap)
  print(text, end="")
  if f.out:
    with open(f.out, "w") as out:
      out.write(
          f"<!-- written by python -m experiments.binding "
          f"{' '.join('--workdir=' + w for w in f.workdir)} "
          f"--num={f.num} --swap={f.swap} -->\n" + text
      )
    print(f"wrote {f.out}")


if __name__ == "__main__":
  flags.DEFINE_multi_string(
      "workdir", None, "A trained shapes run (repeat " "the flag for several)."
  )
  flags.DEFINE_integer(
      "num",
      500,
      "Test examples read (their two-object " "captions are probed).",
  )
  flags.DEFINE_enum(
      "swap",
      "color",
      ["color", "shape"],
      "What the "
      "changed caption changes: two objects' colours trade "
      "places, or a circle becomes a square (and back).",
  )
  flags.DEFINE_string("out", None, "Also write the table here (markdown).")
  cli.run(main, required=["workdir"])
