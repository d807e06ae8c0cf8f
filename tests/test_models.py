"""Model tests on tiny sizes: shapes, init behaviour, masking, autoencoder, pretrained loaders."""

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from txt2img_jax.models import autoencoder as ae
from txt2img_jax.models import dit as dit_lib
from txt2img_jax.models import dit_params
from txt2img_jax.models import image_encoder
from txt2img_jax.models import text_encoder
from txt2img_jax.models import text_head

B, L, D = 2, 6, 16
LATENT = (8, 8, 4)
HEAD_KWARGS = {
    "pooled_mlp": dict(hidden=32),
    "token_transformer": dict(width=16, depth=1, num_heads=2, reduced_width=2),
    "grid_query": dict(width=16, depth=1, num_heads=2, grid_size=4),
    "mlp_conv": dict(hidden=32, conv_width=8, num_blocks=2, num_groups=4),
    "token_splat": dict(width=16, depth=1, num_heads=2, content_width=4),
}


def _key(seed):
  # The models are key-agnostic; rbg keys compile in a fraction of threefry's time on CPU.
  return jax.random.key(seed, impl="rbg")


def _tokens_and_mask():
  tokens = jax.random.normal(_key(0), (B, L, D))
  mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  return tokens, mask


def _tiny_dit(**kw):
  return dit_lib.DiT(LATENT, patch_size=2, width=16, depth=2, num_heads=2, **kw)


def _dit_inputs():
  x = jax.random.normal(_key(1), (B, *LATENT))
  return x, jnp.array([0.3, 0.9]), jnp.array([0, 1], jnp.int32)


# --- text heads ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HEAD_KWARGS))
def test_text_head_shapes_init_and_masking(kind):
  head = text_head.make_text_head(kind, LATENT, **HEAD_KWARGS[kind])
  tokens, mask = _tokens_and_mask()
  params = jax.jit(head.init)(_key(0), tokens, mask)
  apply = jax.jit(head.apply)
  mu, log_var = apply(params, tokens, mask)
  assert mu.shape == log_var.shape == (B, *LATENT)
  assert mu.dtype == log_var.dtype == jnp.float32
  # Init near the prior: small mu, log_var ~ 0.
  assert float(jnp.abs(mu).mean()) < 0.5
  assert float(jnp.abs(log_var).max()) < 1.0
  # Features at padded positions must not matter.
  noisy = tokens.at[0, 3:].set(100.0)
  mu2, lv2 = apply(params, noisy, mask)
  np.testing.assert_allclose(mu2, mu, atol=1e-5)
  np.testing.assert_allclose(lv2, log_var, atol=1e-5)


def test_text_head_bf16_compute():
  # Also covers the default grid: one query per latent cell.
  kwargs = dict(HEAD_KWARGS["grid_query"], grid_size=None)
  head = text_head.make_text_head(
      "grid_query", LATENT, dtype=jnp.bfloat16, **kwargs
  )
  tokens, mask = _tokens_and_mask()
  params = jax.jit(head.init)(_key(0), tokens, mask)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(params)))
  mu, log_var = jax.jit(head.apply)(params, tokens, mask)
  assert mu.dtype == log_var.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(mu)))


@pytest.mark.parametrize(
    "kind, latent, kwargs, match",
    [
        ("nope", LATENT, {}, "unknown text head kind"),
        ("grid_query", LATENT, dict(grid_size=3), "grid_size 3 must divide"),
        ("grid_query", LATENT, dict(width=18, num_heads=2), "divisible by 4"),
        (
            "token_transformer",
            LATENT,
            dict(width=16, num_heads=3),
            "not divisible by num_heads",
        ),
        (
            "mlp_conv",
            LATENT,
            dict(conv_width=10, num_groups=4),
            "not divisible by num_groups",
        ),
        (
            "mlp_conv",
            LATENT,
            dict(norm="batch"),
            "norm must be 'group' or 'layer'",
        ),
        ("pooled_mlp", LATENT, dict(hiden=3), "unknown fields"),
        ("pooled_mlp", (8, 8), {}, "latent_shape must be"),
    ],
)
def test_check_text_head_config_errors(kind, latent, kwargs, match):
  with pytest.raises(ValueError, match=match):
    text_head.check_text_head_config(kind, latent, **kwargs)


def test_check_text_head_config_accepts_defaults():
  for kind in text_head.HEADS:
    text_head.check_text_head_config(kind, (32, 32, 4))
  text_head.check_text_head_config("grid_query", (32, 32, 4), grid_size=16)


# --- text encoders -------------------------------------------------------------------------


def test_small_text_encoder_ignores_padding():
  enc = text_encoder.SmallTextEncoder(
      vocab_size=20, max_len=L, width=16, depth=2, num_heads=2
  )
  ids = jnp.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]], jnp.int32)
  mask = ids > 0
  params = jax.jit(enc.init)(_key(0), ids, mask)
  apply = jax.jit(enc.apply)
  out = apply(params, ids, mask)
  assert out.shape == (B, L, 16) and out.dtype == jnp.float32
  out2 = apply(params, ids.at[0, 3:].set(7), mask)
  np.testing.assert_allclose(out2[0, :3], out[0, :3], atol=1e-5)


def _tiny_tokenizer(max_len):
  import tokenizers
  import transformers

  words = ["[PAD]", "[UNK]", "a", "red", "blue", "circle", "square"]
  tok = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(
          {w: i for i, w in enumerate(words)}, unk_token="[UNK]"
      )
  )
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token="[PAD]",
      unk_token="[UNK]",
      model_max_length=max_len,
  )


def _save_tiny_model(kind, path, vocab_size, max_len):
  import transformers

  if kind == "clip":
    cfg = transformers.CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=vocab_size,
        max_position_embeddings=max_len,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.FlaxCLIPTextModel(cfg, _do_init=False)
    input_shape = (1, max_len)
  else:
    cfg = transformers.T5Config(
        d_model=32,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        d_kv=8,
        vocab_size=vocab_size,
    )
    model = transformers.FlaxT5EncoderModel(cfg, _do_init=False)
    input_shape = (1, max_len)
  model.save_pretrained(path, params=model.init_weights(_key(0), input_shape))


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_pretrained_text_encoder(kind, tmp_path):
  max_len = 8
  tokenizer = _tiny_tokenizer(max_len)
  _save_tiny_model(kind, str(tmp_path), len(tokenizer), max_len)
  tokenizer.save_pretrained(str(tmp_path))

  enc = text_encoder.load_pretrained_text_encoder(str(tmp_path))
  assert enc.width == 32 and enc.max_len == max_len
  batch = enc.tokenizer(
      ["a red circle", "blue square"],
      padding="max_length",
      max_length=enc.max_len,
      return_tensors="np",
  )
  apply = jax.jit(enc.apply)
  out = apply(enc.params, batch["input_ids"], batch["attention_mask"])
  assert out.shape == (2, max_len, 32)
  again = text_encoder.load_pretrained_text_encoder(str(tmp_path))
  np.testing.assert_array_equal(
      apply(again.params, batch["input_ids"], batch["attention_mask"]), out
  )


def test_pretrained_text_encoder_rejects_other_models(tmp_path):
  import transformers

  transformers.BertConfig(
      hidden_size=8,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=8,
  ).save_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match="unsupported text encoder model_type"):
    text_encoder.load_pretrained_text_encoder(str(tmp_path))


# --- DiT -----------------------------------------------------------------------------------


def test_dit_zero_at_init_then_nonzero():
  model = _tiny_dit()
  x, t, ind = _dit_inputs()
  variables = nn.unbox(jax.jit(model.init)(_key(0), x, t, ind))
  apply = jax.jit(model.apply)
  v = apply(variables, x, t, ind)
  assert v.shape == (B, *LATENT) and v.dtype == jnp.float32
  assert float(jnp.abs(v).max()) == 0.0
  params = variables["params"]
  noise = np.random.default_rng(3)
  perturbed = jax.tree.map(
      lambda p: p + 0.1 * noise.standard_normal(p.shape, np.float32), params
  )
  v2 = apply({"params": perturbed}, x, t, ind)
  assert float(jnp.abs(v2).max()) > 0.0
  # The indicator and the time input both reach the output.
  assert not np.allclose(v2, apply({"params": perturbed}, x, t, 1 - ind))
  assert not np.allclose(v2, apply({"params": perturbed}, x, t * 20 - 10, ind))


def test_dit_bf16_and_logsnr_input():
  model = _tiny_dit(dtype=jnp.bfloat16)
  x, _, ind = _dit_inputs()
  log_snr = jnp.array([-10.0, 10.0])
  variables = jax.jit(model.init)(_key(0), x, log_snr, ind)
  v = jax.jit(model.apply)(variables, x, log_snr, ind)
  assert v.shape == (B, *LATENT) and v.dtype == jnp.float32


def test_logical_axis_annotations():
  model = _tiny_dit(scan=False)
  x, t, ind = _dit_inputs()
  variables = jax.eval_shape(model.init, _key(0), x, t, ind)
  specs = nn.get_partition_spec(variables)["params"]
  assert specs["patch_embed"]["kernel"] == jax.sharding.PartitionSpec(
      None, "embed"
  )
  block = specs["block_0"]
  assert block["attn"]["query"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "heads"
  )
  assert block["attn"]["out"]["kernel"] == jax.sharding.PartitionSpec(
      "heads", "embed"
  )
  assert block["mlp"]["fc1"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "mlp"
  )
  assert block["modulation"]["kernel"] == jax.sharding.PartitionSpec(
      "embed", "mlp"
  )
  head = text_head.make_text_head(
      "pooled_mlp", LATENT, **HEAD_KWARGS["pooled_mlp"]
  )
  tokens, mask = _tokens_and_mask()
  head_specs = nn.get_partition_spec(
      jax.eval_shape(head.init, _key(0), tokens, mask)
  )
  assert head_specs["params"]["out"]["kernel"] == jax.sharding.PartitionSpec(
      "mlp", "latent"
  )


def test_scanned_blocks_stack_on_a_layers_axis():
  model = _tiny_dit(scan=True)
  x, t, ind = _dit_inputs()
  variables = jax.eval_shape(model.init, _key(0), x, t, ind)
  specs = nn.get_partition_spec(variables)["params"]
  assert "block_0" not in specs
  blocks = specs["blocks"]
  assert blocks["attn"]["query"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "embed", "heads"
  )
  assert blocks["mlp"]["fc2"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "mlp", "embed"
  )
  shapes = nn.unbox(variables)["params"]["blocks"]
  assert shapes["attn"]["query"]["kernel"].shape == (2, 16, 16)


def _noisy_params(model, seed: int):
  """Initial params plus noise: non-zero everywhere (the zero-init gates
  would hide the blocks otherwise)."""
  params = nn.unbox(jax.jit(model.init)(_key(0), *_dit_inputs()))["params"]
  noise = np.random.default_rng(seed)
  return jax.tree.map(
      lambda p: p + 0.1 * noise.standard_normal(p.shape, np.float32), params
  )


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_dit_equals_unrolled_with_converted_params(remat):
  x, t, ind = _dit_inputs()
  unrolled = _tiny_dit(scan=False)
  params = _noisy_params(unrolled, 5)
  stacked = dit_params.stack_block_params(params)
  assert "blocks" in stacked and "block_0" not in stacked
  scanned = _tiny_dit(scan=True, remat=remat)

  def loss(model, p):
    return jnp.sum(model.apply({"params": p}, x, t, ind) ** 2)

  v_unrolled = unrolled.apply({"params": params}, x, t, ind)
  v_scanned = scanned.apply({"params": stacked}, x, t, ind)
  assert float(jnp.abs(v_unrolled).max()) > 0.1
  np.testing.assert_allclose(v_scanned, v_unrolled, rtol=1e-5, atol=1e-5)
  # The gradients agree too, once brought to the same layout.
  g_unrolled = jax.grad(functools.partial(loss, unrolled))(params)
  g_scanned = dit_params.unstack_block_params(
      jax.grad(functools.partial(loss, scanned))(stacked)
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      g_scanned,
      g_unrolled,
  )


@pytest.mark.parametrize("out_head", ["linear", "overlap", "conv"])
def test_stack_block_params_for_every_output_head(out_head):
  # Each head names its last layer differently; the blocks convert alike.
  x, t, ind = _dit_inputs()
  unrolled = _tiny_dit(scan=False, out_head=out_head)
  params = _noisy_params(unrolled, 6)
  stacked = dit_params.stack_block_params(params)
  assert "blocks" in stacked and "block_0" not in stacked
  np.testing.assert_allclose(
      _tiny_dit(scan=True, out_head=out_head).apply(
          {"params": stacked}, x, t, ind
      ),
      unrolled.apply({"params": params}, x, t, ind),
      rtol=1e-5,
      atol=1e-5,
  )
  back = dit_params.unstack_block_params(stacked)
  assert sorted(back) == sorted(params)


def test_stack_block_params_round_trip_on_a_state_tree():
  """The converters find every DiT param dict in a restored state (params, EMA, optimizer
  moments as nested dicts) and leave the rest alone; both directions are exact inverses.
  """
  x, t, ind = _dit_inputs()
  params = nn.unbox(_tiny_dit(scan=False).init(_key(0), x, t, ind))["params"]
  text = {
      "block_0": {"w": np.ones((3,))},
      "patch_embed_not": 1,
  }  # Not a DiT: untouched.
  state = {
      "step": 7,
      "params": {"flow": params, "text_encoder": text},
      "opt_state": [{"mu": {"flow": params}}, ()],
  }
  stacked = dit_params.stack_block_params(state)
  assert jax.tree.structure(
      stacked["params"]["text_encoder"]
  ) == jax.tree.structure(text)
  assert sorted(stacked["params"]["flow"]) == sorted(
      stacked["opt_state"][0]["mu"]["flow"]
  )
  kernel = stacked["params"]["flow"]["blocks"]["modulation"]["kernel"]
  assert kernel.shape == (2,) + params["block_0"]["modulation"]["kernel"].shape
  np.testing.assert_array_equal(
      kernel[1], params["block_1"]["modulation"]["kernel"]
  )
  # Idempotent, and the reverse restores the original leaves exactly.
  assert jax.tree.structure(
      dit_params.stack_block_params(stacked)
  ) == jax.tree.structure(stacked)
  back = dit_params.unstack_block_params(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, back, state)
  # The stacked tree is exactly what a scanned DiT initialises.
  scanned_shapes = jax.eval_shape(
      _tiny_dit(scan=True).init, _key(0), x, t, ind
  )["params"]
  assert jax.tree.structure(nn.unbox(scanned_shapes)) == jax.tree.structure(
      stacked["params"]["flow"]
  )


def test_stack_block_params_rejects_gaps():
  x, t, ind = _dit_inputs()
  params = nn.unbox(_tiny_dit(scan=False).init(_key(0), x, t, ind))["params"]
  del params["block_0"]
  with pytest.raises(ValueError, match="not 0..0"):
    dit_params.stack_block_params(params)


def test_dit_rejects_unknown_remat():
  x, t, ind = _dit_inputs()
  with pytest.raises(ValueError, match="flow.remat"):
    _tiny_dit(scan=True, remat="some").init(_key(0), x, t, ind)


def test_replicated_rules_apply():
  """With rules that replicate everything, logical constraints resolve to all-None specs."""
  model = _tiny_dit()
  x, t, ind = _dit_inputs()
  variables = jax.eval_shape(model.init, _key(0), x, t, ind)
  rules = [
      (name, None)
      for name in (
          "embed",
          "mlp",
          "heads",
          "vocab",
          "latent",
          "conv_in",
          "conv_out",
          "layers",
      )
  ]
  mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(variables), rules)
  is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)
  for spec in jax.tree.leaves(mesh_specs, is_leaf=is_spec):
    assert all(a is None for a in spec)


# --- image encoder -------------------------------------------------------------------------


def test_image_encoder_shape():
  model = image_encoder.ImageEncoder(out_dim=12, width=8, depth=2)
  x = jnp.ones((B, *LATENT))
  params = jax.jit(model.init)(_key(0), x)
  out = jax.jit(model.apply)(params, x)
  assert out.shape == (B, 12) and out.dtype == jnp.float32


# --- autoencoder ---------------------------------------------------------------------------


def _random_images(n, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, size, size, 3)) / 255.0).astype(np.float32)


def test_pixel_autoencoder_round_trip():
  model = ae.PixelAutoencoder(factor=2)
  assert model.latent_shape(8) == (4, 4, 12)
  with pytest.raises(ValueError):
    model.latent_shape(9)
  images = _random_images(4)
  moments = jax.jit(model.encode_moments)({}, images)
  assert moments[0].shape == (4, 4, 4, 12)
  latent = jax.jit(model.sample)(moments, _key(0))
  recon = jax.jit(model.decode)({}, latent)
  assert recon.shape == images.shape
  assert float(jnp.abs(recon - images).max()) < 1.0 / 255
  assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_latent_stats_standardise():
  model = ae.PixelAutoencoder(factor=2)
  rng = np.random.default_rng(1)
  # Channels with different means and spreads, so the per-channel statistics matter.
  batches = [
      np.clip(
          rng.normal(0.3, 0.1, (8, 8, 8, 3)) * np.array([1.0, 2.0, 0.5]), 0, 1
      ).astype(np.float32)
      for _ in range(3)
  ]
  stats = ae.compute_latent_stats(model, batches, _key(0))
  assert stats.shift.shape == stats.scale.shape == (12,)
  encode = jax.jit(
      lambda b, key: model.sample(model.encode_moments({}, b), key)
  )
  latents = [encode(b, _key(9)) for b in batches]
  z = ae.standardize(jnp.concatenate(latents), stats)
  flat = np.asarray(z).reshape(-1, 12)
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-2)
  np.testing.assert_allclose(flat.std(0), 1.0, atol=1e-2)
  np.testing.assert_allclose(
      ae.unstandardize(z, stats), jnp.concatenate(latents), atol=1e-5
  )
  again = ae.LatentStats.from_dict(stats.to_dict())
  np.testing.assert_allclose(again.shift, stats.shift)
  np.testing.assert_allclose(again.scale, stats.scale)
  # A constant channel gets the std floor instead of a division by ~0.
  flat_stats = ae.compute_latent_stats(
      model, [np.zeros((2, 8, 8, 3), np.float32)], _key(0), min_std=0.5
  )
  assert float(np.min(flat_stats.scale)) == 0.5


@pytest.mark.parametrize(
    "head,reaches", [("linear", False), ("conv", True), ("overlap", True)]
)
def test_dit_out_heads_and_token_edges(head, reaches):
  """A cell's output depends on the neighbouring token only with a head that decodes across
  token edges; DiT's linear head decodes every token alone. With no blocks (depth 0) nothing
  else mixes tokens, so the head alone decides."""
  x, t, ind = _dit_inputs()
  model = dit_lib.DiT(
      LATENT, patch_size=2, width=16, depth=0, num_heads=2, out_head=head
  )
  variables = nn.unbox(model.init(_key(0), x, t, ind))
  assert (
      float(jnp.abs(model.apply(variables, x, t, ind)).max()) == 0.0
  )  # Zero at init.
  rng = np.random.default_rng(4)
  params = jax.tree.map(
      lambda a: a + 0.1 * rng.standard_normal(a.shape, np.float32),
      variables["params"],
  )
  apply = functools.partial(model.apply, {"params": params})
  p = 2
  bumped = x.at[:, :p, p : 2 * p].add(
      1.0
  )  # The input of the token right of the first.
  first_cells = np.abs(np.asarray(apply(bumped, t, ind) - apply(x, t, ind)))[
      :, :p, :p
  ]
  assert (first_cells.max() > 0) == reaches, head


def test_dit_rejects_unknown_out_head():
  x, t, ind = _dit_inputs()
  with pytest.raises(ValueError, match="out_head"):
    _tiny_dit(out_head="cubic").init(_key(0), x, t, ind)
