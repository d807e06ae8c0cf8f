"""Loss terms, each returned on its own so that every one can be logged.

Conventions (so the numbers read like the diagnosis note's):
- flow: mean squared error over every latent element and the batch;
- kl_raw: the posterior's penalty summed over the latent dimensions and
  averaged over the batch (the note's kl_raw ~ 70 on 8192 dims), of one of
  two kinds (`KL_KINDS`, `config.loss.kl_kind`):
    gaussian:  0.5 sum(mu^2 + e^lv - 1 - lv), KL(N(mu, e^lv) || N(0, I));
    crossflow: 0.5 sum((0.3 mu)^6 + e^lv - 1 - lv), CrossFlow's own term
      (trained there with weight 1e-2). It is not a KL: the sixth power
      barely pulls mu while |mu| < 2 (gradient < 0.07 against the
      Gaussian's 2) and climbs steeply past 0.3|mu| = 1, so the means keep
      their spread within a box and mainly the variances are drawn to 1;
- tv: total variation of z_text, summed over the latent like kl_raw
  (so the note's weights 1e-6 - 5e-6 have the scale they had there);
- clip: symmetric InfoNCE between flattened, normalised z_text and the image
  tower's embedding, with a learnable temperature s read in one of two ways
  (`LOGIT_SCALE_KINDS`, `config.loss.logit_scale_kind`):
    exp: logits = min(e^s, 100) cos (CLIP's log-temperature, capped);
    raw: logits = s cos, unbounded (CrossFlow multiplies by open_clip's
      log-scale parameter as it is). The same s then means a far warmer
      softmax (s = 2.66 is a scale of 2.66, not 14.3), and nothing stops s
      from growing or turning negative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

KL_KINDS = ("gaussian", "crossflow")
LOGIT_SCALE_KINDS = ("exp", "raw")
# What z_text is contrasted with (`config.loss.clip_target`): the image
# tower's embedding of x1 (CrossFlow), or x1 itself (stop-gradient), which
# asks z_text to resemble its image latent up to scale.
CLIP_TARGETS = ("tower", "latent")


def flow_mse_per_example(v_pred: jax.Array, v_target: jax.Array) -> jax.Array:
  err = jnp.square(v_pred.astype(jnp.float32) - v_target.astype(jnp.float32))
  return err.reshape(err.shape[0], -1).mean(axis=1)


def alignment_per_example(mu: jax.Array, x1: jax.Array) -> jax.Array:
  """Mean squared distance of the text posterior's mean to the image latent
  (`loss.align_weight`), (B,); no gradient to x1."""
  err = jnp.square(
      mu.astype(jnp.float32) - jax.lax.stop_gradient(x1).astype(jnp.float32)
  )
  return err.reshape(err.shape[0], -1).mean(axis=1)


def kl_to_standard_normal(mu: jax.Array, log_var: jax.Array) -> jax.Array:
  """Per-example KL(N(mu, e^lv) || N(0, I)) summed over the latent, (B,)."""
  return kl_term(mu, log_var, "gaussian")


def kl_term(mu: jax.Array, log_var: jax.Array, kind: str) -> jax.Array:
  """Per-example posterior penalty of `kind` (see the module doc), (B,)."""
  if kind not in KL_KINDS:
    raise ValueError(f"loss.kl_kind={kind!r}: expected one of {KL_KINDS}")
  mu = mu.astype(jnp.float32)
  log_var = log_var.astype(jnp.float32)
  mean_term = jnp.square(mu) if kind == "gaussian" else (0.3 * mu) ** 6
  kl = 0.5 * (mean_term + jnp.exp(log_var) - 1.0 - log_var)
  return kl.reshape(kl.shape[0], -1).sum(axis=1)


def total_variation(z: jax.Array) -> jax.Array:
  """Anisotropic TV of (B, H, W, C) maps summed over the map, (B,)."""
  dh = jnp.abs(z[:, 1:] - z[:, :-1]).reshape(z.shape[0], -1).sum(axis=1)
  dw = jnp.abs(z[:, :, 1:] - z[:, :, :-1]).reshape(z.shape[0], -1).sum(axis=1)
  return dh + dw


def contrastive(
    text_vec: jax.Array,
    image_vec: jax.Array,
    logit_scale: jax.Array,
    kind: str = "exp",
    max_scale: float = 100.0,
    negatives: jax.Array | None = None,
    negatives_valid: jax.Array | None = None,
) -> jax.Array:
  """Symmetric InfoNCE; `kind` says how logit_scale becomes the multiplier.

  exp: min(exp(logit_scale), max_scale); raw: logit_scale itself
  (see the module doc for why the two differ). `negatives` (B, ...) are
  text vectors of captions that match no image (hard negatives): each
  image's row then ranks its caption among the B captions and the valid
  negatives (`negatives_valid`, bool (B,)); the text rows are unchanged.
  """
  if kind not in LOGIT_SCALE_KINDS:
    raise ValueError(
        f"loss.logit_scale_kind={kind!r}: expected one of "
        f"{LOGIT_SCALE_KINDS}"
    )

  def norm(x):
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)

  s = logit_scale.astype(jnp.float32)
  scale = jnp.minimum(jnp.exp(s), max_scale) if kind == "exp" else s
  image_n = norm(image_vec)
  logits = scale * norm(text_vec) @ image_n.T
  labels = jnp.arange(logits.shape[0])
  l_t = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  logits_i = logits.T
  if negatives is not None:
    neg = scale * image_n @ norm(negatives).T
    if negatives_valid is not None:
      neg = jnp.where(negatives_valid[None, :], neg, -jnp.inf)
    logits_i = jnp.concatenate([logits_i, neg], axis=1)
  l_i = optax.softmax_cross_entropy_with_integer_labels(logits_i, labels)
  return 0.5 * (l_t.mean() + l_i.mean())


def swap_null_targets(
    rng: jax.Array, null: jax.Array, x1: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Classifier-free guidance targets (CrossFlow): returns (null, targets).

  A null sample (indicator 0) gets the image of another null sample, so the
  null branch learns to carry any text latent to *some* image and the
  conditional-minus-null difference is what the caption adds. The permutation
  is a cyclic shift among the null samples in a random order, so no null
  sample keeps its own image. A lone null sample has no other null image to
  take: as in CrossFlow it goes back to being conditional (the returned null
  mask drops it), since training it as null on its own image would teach the
  null branch its caption.
  """
  b = null.shape[0]
  null = null & (null.sum() >= 2)
  # Null samples first, in random order; the others after them.
  key = jnp.where(null, 0.0, 2.0) + jax.random.uniform(rng, (b,))
  order = jnp.argsort(key)
  n_null = null.sum()
  pos = jnp.arange(b)
  src_pos = jnp.where(pos < n_null, (pos + 1) % jnp.maximum(n_null, 1), pos)
  src = order[src_pos]
  # Position p in `order` takes its image from `src[p]`.
  perm = jnp.zeros((b,), jnp.int32).at[order].set(src.astype(jnp.int32))
  return null, x1[perm]


def kl_weight(step: jax.Array, weight: float, warmup_steps: int) -> jax.Array:
  """beta_KL with a linear warm-up 0 -> weight over warmup_steps."""
  if warmup_steps <= 0:
    return jnp.asarray(weight, jnp.float32)
  frac = jnp.clip(step.astype(jnp.float32) / warmup_steps, 0.0, 1.0)
  return weight * frac


def window_weight(
    step: jax.Array, weight: float, start: int, stop: int
) -> jax.Array:
  """`weight` for start <= step < stop (stop <= 0: no end), else 0."""
  step = step.astype(jnp.int32)
  on = step >= start
  if stop > 0:
    on = on & (step < stop)
  return jnp.where(on, weight, 0.0).astype(jnp.float32)
