"""Is a two-object caption's binding in z_text? Caption vs its colour swap.

  python -m txt2img_jax.experiments.binding --workdir=workdirs/restart \
      [--workdir=OTHER_RUN ...] [--num=500] [--out=binding.md]

The default run's samples blend two objects' colours. That can be lost on
the text side (z_text the same for "a red circle ... a blue square" and
"a blue circle ... a red square") or on the flow side (z_text differs, the
flow does not draw the difference). For every two-object caption among the
first --num test examples of a shapes run, its colour swap (the two colour
words trade places, `data/negatives.py`) is embedded too, and the table
gives, from the EMA parameters' posterior means mu:

- `swap_dist`: |mu(caption) - mu(swap)| / |mu(caption)|, how far apart the
  text side puts the two;
- `tower_pref`: the share of captions whose image the contrastive image
  tower embeds nearer (cosine) to mu(caption) than to mu(swap) (0.5: the
  text side does not tell them apart);
- `latent_pref`: the same with the image latent x1 itself in place of the
  tower's embedding (what the flow starts from vs where it must go);
- `color_acc_2obj`: the structure benchmark's colour accuracy of the
  samples of two-object captions, for the same run and captions, when a
  sweep has scored the run on --num captions (else blank).
"""

from __future__ import annotations

import json
import os

from absl import flags
import jax
import numpy as np

from txt2img_jax import cli
from txt2img_jax import reporting
from txt2img_jax.data import negatives
from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import autoencoder as ae_lib

COLUMNS = ("captions", "swap_dist", "tower_pref", "latent_pref",
           "color_acc_2obj")


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def measure(run, num: int) -> dict[str, float]:
  """The binding measures above for a run rebuilt by `assembly.load_run`."""
  from txt2img_jax.data import pipeline
  from txt2img_jax.experiments import common
  c = run.config
  if c.data.name != "shapes":
    raise ValueError(f"{run.workdir}: the binding probe needs a shapes run "
                     f"(data.name={c.data.name!r})")
  data = pipeline.load_split(run.builder, "test", num,
                             tokenizer=run.text.tokenizer,
                             max_len=c.data.max_len)
  two = np.flatnonzero(data["num_objects"] == 2)
  if not len(two):
    raise ValueError(f"no two-object caption among the first {num} test "
                     "examples: raise --num")
  captions = [data["caption"][i] for i in two]
  rng = np.random.default_rng(0)
  swaps = [negatives.negative_caption(x, (shapes.COLOR_NAMES,), rng)
           for x in captions]  # Two objects always have two colours.
  tok = run.text.tokenizer
  mu = common.z_text_mean(run, *tokenizer_lib.tokenize(tok, captions,
                                                       c.data.max_len))
  mu_swap = common.z_text_mean(run, *tokenizer_lib.tokenize(tok, swaps,
                                                            c.data.max_len))
  x1 = ae_lib.encode_latent(run.autoencoder, run.autoencoder.params,
                            data["image"][two], jax.random.PRNGKey(0),
                            run.stats)
  emb, _ = run.model.apply({"params": run.ema_params}, x1,
                           method="embed_image")
  a, b = _unit(mu), _unit(mu_swap)

  def prefers(target):
    t = _unit(target)
    return float(np.mean((t * a).sum(1) > (t * b).sum(1)))

  flat = np.asarray(mu, np.float64).reshape(len(mu), -1)
  diff = flat - np.asarray(mu_swap, np.float64).reshape(len(mu), -1)
  out = {"captions": float(len(two)),
         "swap_dist": float(np.mean(np.linalg.norm(diff, axis=1)
                                    / np.linalg.norm(flat, axis=1))),
         "tower_pref": prefers(emb), "latent_pref": prefers(x1)}
  scored = os.path.join(run.workdir, f"benchmark_{num}.json")
  if os.path.exists(scored):  # Written by experiments.common.score.
    with open(scored) as f:
      summary = json.load(f).get("summary", {})
    if "eval/color_acc_2obj" in summary:
      out["color_acc_2obj"] = summary["eval/color_acc_2obj"]
  return out


def table(rows: list[tuple[str, dict]]) -> str:
  lines = ["| run | " + " | ".join(COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  for name, r in rows:
    cells = [("" if k not in r else f"{int(r[k])}" if k == "captions"
              else f"{r[k]:.3f}") for k in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  f = flags.FLAGS
  from txt2img_jax import assembly  # Heavy imports only for the CLI.
  reporting.quiet_orbax()
  rows = []
  for workdir in f.workdir:
    rows.append((workdir, measure(assembly.load_run(workdir), f.num)))
  text = table(rows)
  print(text, end="")
  if f.out:
    with open(f.out, "w") as out:
      out.write(f"<!-- written by python -m txt2img_jax.experiments.binding "
                f"{' '.join('--workdir=' + w for w in f.workdir)} "
                f"--num={f.num} -->\n" + text)
    print(f"wrote {f.out}")


if __name__ == "__main__":
  flags.DEFINE_multi_string("workdir", None, "A trained shapes run (repeat "
                            "the flag for several).")
  flags.DEFINE_integer("num", 500, "Test examples read (their two-object "
                       "captions are probed).")
  flags.DEFINE_string("out", None, "Also write the table here (markdown).")
  cli.run(main, required=["workdir"])
