"""The recommended recipe: the note's fixes, at the embedded data's scale.

From base.py (the plateaued run) it changes what the diagnosis prescribes:
- the LR: cosine warm restarts (SGDR) instead of a long decay
  (note: T0 = 20k, T_mult = 1, eta_min = 2.5e-7, peak = 2 x base);
- time sampling: uniform logSNR on [-2, 6] after a curriculum that starts on
  the structure-forming alpha > 0.8 segment (note: 30k steps);
  time input: the path's true logSNR instead of 4 - 8t;
- a spatial text head (option A: grid of queries with cross-attention);
- the contrastive weight doubled (note: 1.0 -> 2.0) and a small TV on z_text
  (note: 1e-6 - 5e-6);
- beta_KL warmed up 0 -> 0.1 (note: over 30-50k steps).

To restart a plateaued run from its checkpoint instead (keeping its weights):
  python -m txt2img_jax.main --config=configs/restart.py \
      --config.init_from=workdirs/base --workdir=workdirs/restart_from_base
Every field is documented in base.py.
"""

import ml_collections

from txt2img_jax import config_lib

base = config_lib.load_sibling(__file__, "base")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = base.get_config()
  c.name = "restart"

  c.optim.schedule = ml_collections.ConfigDict(dict(
      kind="sgdr", warmup_steps=50,
      t0=600,           # note: T0 = 20k steps.
      t_mult=1,         # note: T_mult = 1.
      eta_min=1e-5))    # note: eta_min = 2.5e-7.

  c.time.sampler = ml_collections.ConfigDict(dict(
      kind="curriculum",
      steps=300,        # note: alpha > 0.8 for the first 30k steps.
      blend_steps=200,
      first=dict(kind="alpha_range", alpha_min=0.8, alpha_max=0.98),
      then=dict(kind="uniform_logsnr", logsnr_min=-2.0, logsnr_max=6.0)))
  c.flow.time_input = "logsnr"

  c.head.kind = "grid_query"
  c.loss.clip_weight = 2.0     # note: 1.0 -> 2.0.
  c.loss.tv_weight = 2e-6      # note: 1e-6 - 5e-6.
  c.loss.kl_weight = 0.1       # note: beta_KL -> 0.1 ...
  c.loss.kl_warmup_steps = 400  # ... over 30-50k steps.

  if variant == "tiny":
    base.shrink(c)
    c.optim.schedule.update(warmup_steps=1, t0=3)
    c.time.sampler.update(steps=2, blend_steps=2)
    c.loss.kl_warmup_steps = 2
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny'")
  return c
