"""Where on the text -> image path training samples t, and what the network sees.

Convention: t = 0 is the text latent, t = 1 the image latent; the signal level
is alpha = t, sigma = 1 - t and logSNR lambda = 2 log(t / (1 - t)), so
t = sigmoid(lambda / 2).

Sampler configs (`config.time.sampler` or wherever the trainer keeps them)::

    dict(kind='uniform', t_min=0.0, t_max=1.0)            # the note's run
    dict(kind='logit_normal', mean=0.0, std=1.0)          # CrossFlow's
    dict(kind='uniform_logsnr', logsnr_min=-2.0, logsnr_max=6.0)   # the note's fix
    dict(kind='alpha_range', alpha_min=0.6, alpha_max=0.98)
    dict(kind='curriculum', steps=30_000, blend_steps=0,  # alpha > 0.8 first
         first=dict(kind='alpha_range', alpha_min=0.8, alpha_max=0.98),
         then=dict(kind='uniform_logsnr', logsnr_min=-2.0, logsnr_max=6.0))

All samplers draw inside a jitted step; `step` may be traced.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# t is kept in [T_EPS, 1 - T_EPS] so that logSNR and 1/(1 - t) stay finite.
T_EPS = 1e-5
# Range the 'logsnr' time input is clipped to (|lambda| = 20 is t ~ 4.5e-5 from an end).
LOGSNR_CLIP = 20.0

_DEFAULTS = {
    "uniform": dict(t_min=0.0, t_max=1.0),
    "logit_normal": dict(mean=0.0, std=1.0),
    "uniform_logsnr": dict(logsnr_min=-2.0, logsnr_max=6.0),
    "alpha_range": dict(alpha_min=0.6, alpha_max=0.98),
    "curriculum": dict(blend_steps=0),
}
_REQUIRED = {"curriculum": ("first", "then", "steps")}
TIME_INPUT_KINDS = ("t", "logsnr", "linear_logsnr")


def _to_dict(cfg: Any) -> dict[str, Any]:
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg.to_dict()
  return dict(cfg)


def _fields(cfg: Any, nested: bool = False) -> dict[str, Any]:
  """The sampler's fields with defaults filled in; raises ValueError."""
  f = _to_dict(cfg)
  kind = f.pop("kind", None)
  if kind not in _DEFAULTS:
    raise ValueError(
        f"Unknown time sampler kind {kind!r}; expected one of {sorted(_DEFAULTS)}."
    )
  if nested and kind == "curriculum":
    raise ValueError("A curriculum cannot contain another curriculum.")
  allowed = set(_DEFAULTS[kind]) | set(_REQUIRED.get(kind, ()))
  unknown = set(f) - allowed
  if unknown:
    raise ValueError(
        f"Unknown field(s) {sorted(unknown)} for time sampler {kind!r}."
    )
  missing = [k for k in _REQUIRED.get(kind, ()) if k not in f]
  if missing:
    raise ValueError(f"Time sampler {kind!r} needs {missing}.")
  out = {**_DEFAULTS[kind], **f, "kind": kind}

  def check_range(lo, hi, low_bound=-np.inf, high_bound=np.inf):
    a, b = out[lo], out[hi]
    if not low_bound <= a < b <= high_bound:
      raise ValueError(
          f"{kind}: need {low_bound} <= {lo} < {hi} <= {high_bound}, got {lo}={a}, {hi}={b}."
      )

  if kind == "uniform":
    check_range("t_min", "t_max", 0.0, 1.0)
  elif kind == "alpha_range":
    check_range("alpha_min", "alpha_max", 0.0, 1.0)
  elif kind == "uniform_logsnr":
    check_range("logsnr_min", "logsnr_max")
  elif kind == "logit_normal":
    if not out["std"] > 0:
      raise ValueError(f'logit_normal: std must be > 0, got {out["std"]}.')
  elif kind == "curriculum":
    for k in ("steps", "blend_steps"):
      if int(out[k]) != out[k] or out[k] < 0:
        raise ValueError(
            f"curriculum: {k} must be an integer >= 0, got {out[k]!r}."
        )
    out["first"] = _fields(out["first"], nested=True)
    out["then"] = _fields(out["then"], nested=True)
  return out


def validate_time_config(cfg: Any) -> None:
  """Raises ValueError for an unknown kind, an empty range, a nested curriculum, ..."""
  _fields(cfg)


def _sample(rng: jax.Array, batch_size: int, f: dict[str, Any]) -> jax.Array:
  kind = f["kind"]
  shape = (batch_size,)
  if kind == "uniform":
    t = jax.random.uniform(rng, shape, minval=f["t_min"], maxval=f["t_max"])
  elif kind == "alpha_range":
    t = jax.random.uniform(
        rng, shape, minval=f["alpha_min"], maxval=f["alpha_max"]
    )
  elif kind == "uniform_logsnr":
    lam = jax.random.uniform(
        rng, shape, minval=f["logsnr_min"], maxval=f["logsnr_max"]
    )
    t = jax.nn.sigmoid(lam / 2)
  elif kind == "logit_normal":
    t = jax.nn.sigmoid(f["mean"] + f["std"] * jax.random.normal(rng, shape))
  else:
    raise AssertionError(kind)
  return jnp.clip(t, T_EPS, 1 - T_EPS).astype(jnp.float32)


def curriculum_then_prob(step: Any, steps: int, blend_steps: int) -> jax.Array:
  """Probability of drawing from `then`: 0 before `steps`, linear to 1 over `blend_steps`."""
  step = jnp.asarray(step, jnp.float32)
  if blend_steps == 0:
    return (step >= steps).astype(jnp.float32)
  return jnp.clip((step - steps) / blend_steps, 0.0, 1.0)


def sample_t(
    rng: jax.Array,
    batch_size: int,
    cfg: Any,
    step: Any = 0,
    start_prob: float = 0.0,
) -> jax.Array:
  """Draws t of shape (batch_size,), float32 in (0, 1), from the sampler `cfg`.

  `step` (may be traced) only matters for 'curriculum': both samplers are drawn
  and each sample takes `then`'s draw with probability
  `curriculum_then_prob(step, steps, blend_steps)`.
  `start_prob` (`time.start_prob`): each sample is instead put at the start of
  the path, t = T_EPS, with this probability (0: the sampler alone, and the
  same draws as without the argument).
  """
  f = _fields(cfg)
  if f["kind"] != "curriculum":
    t = _sample(rng, batch_size, f)
  else:
    k_first, k_then, k_mix = jax.random.split(rng, 3)
    t_first = _sample(k_first, batch_size, f["first"])
    t_then = _sample(k_then, batch_size, f["then"])
    p_then = curriculum_then_prob(step, int(f["steps"]), int(f["blend_steps"]))
    use_then = jax.random.uniform(k_mix, (batch_size,)) < p_then
    t = jnp.where(use_then, t_then, t_first)
  if start_prob:
    at_start = (
        jax.random.uniform(jax.random.fold_in(rng, 7), (batch_size,))
        < start_prob
    )
    t = jnp.where(at_start, jnp.float32(T_EPS), t)
  return t


def validate_start_prob(p: Any) -> None:
  if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
    raise ValueError(f"time.start_prob must be a number in [0, 1), got {p!r}.")


def logsnr(t: jax.Array) -> jax.Array:
  """lambda = 2 log(t / (1 - t)), unclipped."""
  return 2 * (jnp.log(t) - jnp.log1p(-t))


def time_input(t: jax.Array, kind: str) -> jax.Array:
  """What the flow network sees as its time.

  't': t itself; 'logsnr': 2 log(t / (1 - t)) clipped to [-LOGSNR_CLIP,
  LOGSNR_CLIP]; 'linear_logsnr': 4 - 8 t (the note's run; a linear stand-in
  that is *not* the path's logSNR and decreases with t).
  """
  if kind == "t":
    return t
  if kind == "logsnr":
    return jnp.clip(logsnr(t), -LOGSNR_CLIP, LOGSNR_CLIP)
  if kind == "linear_logsnr":
    return 4 - 8 * t
  raise ValueError(
      f"Unknown time input kind {kind!r}; expected one of {TIME_INPUT_KINDS}."
  )


def t_bucket_edges(num_buckets: int) -> np.ndarray:
  """num_buckets + 1 equal-width edges over [0, 1]."""
  if int(num_buckets) != num_buckets or num_buckets < 1:
    raise ValueError(
        f"num_buckets must be an integer >= 1, got {num_buckets!r}."
    )
  return np.linspace(0.0, 1.0, int(num_buckets) + 1)


def bucket_index(t: jax.Array, edges: np.ndarray) -> jax.Array:
  """int32 bucket of each t: i such that edges[i] <= t < edges[i + 1] (t = 1 -> last)."""
  edges = jnp.asarray(edges, jnp.float32)
  idx = jnp.searchsorted(edges, t, side="right") - 1
  return jnp.clip(idx, 0, edges.shape[0] - 2).astype(jnp.int32)


def bucket_sums(
    values: jax.Array, t: jax.Array, edges: np.ndarray
) -> tuple[jax.Array, jax.Array]:
  """(sum of `values`, count) per t bucket, each (num_buckets,); jit-friendly.

  The trainer logs sum / count per bucket (e.g. the per-sample flow loss), and
  may accumulate both over steps before dividing.
  """
  one_hot = jax.nn.one_hot(
      bucket_index(t, edges), len(edges) - 1, dtype=jnp.float32
  )
  return one_hot.T @ values.astype(jnp.float32), one_hot.sum(axis=0)
