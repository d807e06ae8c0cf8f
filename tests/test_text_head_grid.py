"""The grid-query head differs by position from initialisation: its z_text
does not hand every cell the same caption vector (tile_repeat, the measure of
`experiments/common.z_text_measures`), at restart.py's sizes."""

import jax
import numpy as np
import pytest

from txt2img_jax.data import shapes
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.models import text_encoder as text_encoder_lib
from txt2img_jax.models import text_head

LATENT = (16, 16, 12)  # restart.py: 32 px, pixel autoencoder factor 2.
MAX_LEN = 24
FIRST_VERSION = dict(
    query_pos_scale=1.0, token_pos=False, self_attention=False, attn_scale=1.0
)


def tile_repeat(mu: np.ndarray, tile: int = 2) -> float:
  """common.z_text_measures' ztext/tile_repeat, on the posterior means."""
  a = mu - mu.mean(0, keepdims=True)
  n, h, w, c = a.shape
  repeated = a.reshape(n, h // tile, tile, w // tile, tile, c).mean(
      axis=(1, 3), keepdims=True
  )
  return float((h // tile) * (w // tile) * (repeated**2).sum() / (a * a).sum())


@pytest.fixture(scope="module")
def captions():
  """Test captions through restart.py's text encoder at initialisation."""
  texts = [shapes.example(0, "test", i)["caption"] for i in range(96)]
  vocab = shapes.vocabulary()
  tok = tokenizer_lib.build_word_tokenizer(vocab, MAX_LEN)
  ids, mask = tokenizer_lib.tokenize(tok, texts, MAX_LEN)
  encoder = text_encoder_lib.SmallTextEncoder(
      vocab_size=len(vocab) + len(tokenizer_lib.SPECIAL_TOKENS),
      max_len=MAX_LEN,
      width=128,
      depth=2,
      num_heads=4,
      mlp_ratio=4,
  )
  tokens = encoder.apply(
      encoder.init(jax.random.PRNGKey(0), ids, mask), ids, mask
  )
  return tokens, mask


def init_repeat(tokens, mask, seed, **kwargs):
  head = text_head.make_text_head(
      "grid_query",
      LATENT,
      width=128,
      depth=2,
      num_heads=4,
      mlp_ratio=4.0,
      grid_size=8,
      **kwargs,
  )
  params = head.init(jax.random.PRNGKey(seed), tokens, mask)
  mu, _ = head.apply(params, tokens, mask)
  return tile_repeat(np.asarray(mu))


@pytest.mark.parametrize("seed", [0, 1])
def test_cells_differ_from_initialisation(captions, seed):
  tokens, mask = captions
  first = init_repeat(tokens, mask, seed, **FIRST_VERSION)
  fair = init_repeat(tokens, mask, seed)
  assert first > 0.95  # The first version: every cell alike (0.98).
  assert fair < 0.85, fair  # Measured 0.75-0.77 on seeds 0-2.
  assert fair < first - 0.15


def test_first_version_keeps_its_parameter_names(captions):
  """Checkpoints of the first version (the ablation's) still load."""
  tokens, mask = captions
  head = text_head.make_text_head(
      "grid_query",
      LATENT,
      width=32,
      depth=1,
      num_heads=2,
      grid_size=8,
      **FIRST_VERSION,
  )
  params = head.init(jax.random.PRNGKey(0), tokens, mask)["params"]
  assert set(params["block_0"]) == {"ln_q", "ln_kv", "attn", "ln_mlp", "mlp"}
  fair = text_head.make_text_head(
      "grid_query", LATENT, width=32, depth=1, num_heads=2, grid_size=8
  )
  fair_params = fair.init(jax.random.PRNGKey(0), tokens, mask)["params"]
  assert {"self_attn", "self_gate", "ln_self"} <= set(fair_params["block_0"])
  assert float(fair_params["block_0"]["self_gate"]) == 0.0


@pytest.mark.parametrize(
    "field, value",
    [("attn_scale", 0.0), ("query_pos_scale", -1.0), ("attn_scale", "8")],
)
def test_bad_scales_are_clear_errors(field, value):
  with pytest.raises(ValueError, match=field):
    text_head.check_text_head_config("grid_query", LATENT, **{field: value})
