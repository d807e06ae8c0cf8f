"""The Flax KL-VAE against diffusers' PyTorch AutoencoderKL on tiny random weights, its load errors,
and its jit / bfloat16 paths."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The package keeps transformers from importing PyTorch (USE_TORCH=0); this
# test needs diffusers' PyTorch model as the reference.
os.environ["USE_TORCH"] = "1"
import torch  # noqa: E402
from diffusers import AutoencoderKL
from safetensors.numpy import load_file, save_file

from txt2img_jax.models import kl_vae

SIZE = 16
WEIGHTS = kl_vae.WEIGHTS_FILE
VARIANTS = {
    # Stable Diffusion's layout: 4 latent channels, quant convs, no shift.
    "sd": dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        scaling_factor=0.18215,
    ),
    # SD3 / FLUX's layout: 16 channels, no quant convs, a shift; three levels, two resnets each.
    "flux": dict(
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    ),
    "no_mid_attention": dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        mid_block_add_attention=False,
    ),
}


def _save_random_vae(path, **kwargs):
  n = len(kwargs["block_out_channels"])
  torch.manual_seed(0)
  model = AutoencoderKL(
      down_block_types=("DownEncoderBlock2D",) * n,
      up_block_types=("UpDecoderBlock2D",) * n,
      sample_size=SIZE,
      **kwargs,
  )
  # Move every weight off its init (norms start at exactly 1 / 0) so a wrong mapping shows.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval().save_pretrained(path)
  return model


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
  out = {}
  for name, kwargs in VARIANTS.items():
    path = str(tmp_path_factory.mktemp(f"vae_{name}"))
    out[name] = (path, _save_random_vae(path, **kwargs))
  return out


@pytest.fixture(scope="module")
def images():
  return np.random.RandomState(0).rand(2, SIZE, SIZE, 3).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _forward(vae):
  """Everything the tests compare, in one jitted function (one compile per VAE)."""
  encode = lambda p, x: vae.module.apply(
      {"params": p}, x, method=kl_vae.AutoencoderKLModule.encode
  )
  decode = lambda p, z: vae.module.apply(
      {"params": p}, z, method=kl_vae.AutoencoderKLModule.decode
  )

  @jax.jit
  def forward(params, images, latent, rng):
    raw_latent = latent / vae.scaling_factor + vae.shift_factor
    scaled = vae.encode_moments(params, images)
    sampled = vae.sample(scaled, rng)
    return dict(
        moments=encode(params, images * 2 - 1),
        scaled=scaled,
        raw_decoded=decode(params, raw_latent.astype(vae.dtype)).astype(
            jnp.float32
        ),
        decoded=vae.decode(params, latent),
        sampled=sampled,
        round_trip=vae.decode(params, sampled),
    )

  return forward


_LOADED = {}


def _load(path, dtype="float32"):
  """Load once per folder and dtype, with its compiled forward."""
  if (path, dtype) not in _LOADED:
    vae = kl_vae.load(path, dtype)
    _LOADED[path, dtype] = vae, _forward(vae)
  return _LOADED[path, dtype]


def _latent(vae, images):
  """A latent near the encoded one, so the decoder sees realistic and off-mean inputs alike."""
  shape = (images.shape[0],) + vae.latent_shape(images.shape[1])
  return np.random.RandomState(1).randn(*shape).astype(np.float32)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_diffusers(vaes, images, name):
  path, ref = vaes[name]
  vae, forward = _load(path)
  # diffusers' defaults where a variant leaves them out.
  scale = VARIANTS[name].get("scaling_factor", 0.18215)
  shift = VARIANTS[name].get("shift_factor", 0.0)
  assert (vae.scaling_factor, vae.shift_factor) == pytest.approx((scale, shift))
  latent = _latent(vae, images)
  out = forward(vae.params, images, latent, jax.random.PRNGKey(0))
  with torch.no_grad():
    dist = ref.encode(_nchw(images * 2 - 1)).latent_dist
    ref_x = _nhwc(ref.decode(_nchw(latent / scale + shift)).sample)
  ref_mean, ref_logvar = _nhwc(dist.mean), _nhwc(dist.logvar)

  mean, logvar = out["moments"]
  assert mean.shape == (2,) + vae.latent_shape(SIZE)
  assert _rel(mean, ref_mean) <= 1e-4 and _rel(logvar, ref_logvar) <= 1e-4
  mean_s, logvar_s = out["scaled"]
  assert _rel(mean_s, (ref_mean - shift) * scale) <= 1e-4
  assert _rel(logvar_s, ref_logvar + 2 * math.log(scale)) <= 1e-4
  assert _rel(out["raw_decoded"], ref_x) <= 1e-4
  assert _rel(out["decoded"], np.clip((ref_x + 1) / 2, 0, 1)) <= 1e-4
  assert (
      float(out["decoded"].min()) >= 0.0 and float(out["decoded"].max()) <= 1.0
  )


def test_latent_shape_and_jitted_round_trip(vaes, images):
  vae, forward = _load(vaes["flux"][0])
  assert vae.latent_shape(SIZE) == (SIZE // 4, SIZE // 4, 16)
  with pytest.raises(ValueError, match="divisible"):
    vae.latent_shape(SIZE + 2)
  latent = _latent(vae, images)
  out = forward(vae.params, images, latent, jax.random.PRNGKey(3))
  assert out["sampled"].shape == (2,) + vae.latent_shape(SIZE)
  assert (
      out["round_trip"].shape == images.shape
      and out["round_trip"].dtype == jnp.float32
  )
  assert not np.allclose(out["sampled"], out["scaled"][0])  # the noise is there
  # Params are an argument, not baked-in constants: new values, same compiled function.
  compiled = forward._cache_size()
  zeroed = jax.tree.map(np.zeros_like, vae.params)
  out0 = forward(zeroed, images, latent, jax.random.PRNGKey(3))
  assert forward._cache_size() == compiled
  assert not np.allclose(out0["sampled"], out["sampled"])


def test_sample_draws_from_the_moments():
  vae = kl_vae.KLVAE(
      params=None,
      scaling_factor=1.0,
      shift_factor=0.0,
      config=kl_vae.VAEConfig(),
      dtype="float32",
      module=None,
      weights_hash="",
  )
  mean = jnp.full((4096, 1, 1, 1), 2.0)
  z = np.asarray(
      vae.sample(
          (mean, jnp.full_like(mean, math.log(0.25))), jax.random.PRNGKey(0)
      )
  )
  assert abs(z.mean() - 2.0) < 0.05 and abs(z.std() - 0.5) < 0.05


def test_bfloat16_runs_close_to_float32(vaes, images):
  path = vaes["sd"][0]
  (f32, fwd32), (bf16, fwd16) = _load(path), _load(path, "bfloat16")
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(bf16.params))
  latent = _latent(f32, images)
  rng = jax.random.PRNGKey(0)
  out32, out16 = fwd32(f32.params, images, latent, rng), fwd16(
      bf16.params, images, latent, rng
  )
  for key in ("scaled", "decoded"):
    for a16, a32 in zip(
        jax.tree.leaves(out16[key]), jax.tree.leaves(out32[key])
    ):
      assert a16.dtype == jnp.float32 and np.isfinite(np.asarray(a16)).all()
      assert _rel(a16, a32) < 5e-2, key
  assert (
      bf16.fingerprint() != f32.fingerprint()
  )  # their latents differ: no shared cache


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_load_errors(vaes, tmp_path):
  src = vaes["sd"][0]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    kl_vae.load(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="dtype"):
    kl_vae.load(src, dtype="float16")

  no_config = _copy(src, tmp_path / "no_config")
  os.remove(os.path.join(no_config, kl_vae.CONFIG_FILE))
  with pytest.raises(FileNotFoundError, match="config.json"):
    kl_vae.load(no_config)

  no_weights = _copy(src, tmp_path / "no_weights")
  os.remove(os.path.join(no_weights, WEIGHTS))
  with pytest.raises(FileNotFoundError, match=WEIGHTS):
    kl_vae.load(no_weights)

  bad = _copy(src, tmp_path / "bad")
  tensors = load_file(os.path.join(bad, WEIGHTS))
  tensors["decoder.conv_in.weight"] = tensors["decoder.conv_in.weight"][:, :3]
  tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
  del tensors["quant_conv.bias"]
  save_file(tensors, os.path.join(bad, WEIGHTS))
  with pytest.raises(ValueError) as err:
    kl_vae.load(bad)
  msg = str(err.value)
  assert "\n" not in msg
  assert (
      "1 missing: quant_conv.bias" in msg
      and "1 unexpected: encoder.extra.weight" in msg
  )
  assert (
      "1 mis-shaped: decoder.conv_in.weight (16, 3, 3, 3) (want (16, 4, 3, 3))"
      in msg
  )

  wrong_kind = _copy(src, tmp_path / "wrong_kind")
  cfg_path = os.path.join(wrong_kind, kl_vae.CONFIG_FILE)
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["up_block_types"] = ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match="up_block_types"):
    kl_vae.load(wrong_kind)


def test_legacy_attention_names_and_fingerprint(vaes, tmp_path):
  src = vaes["sd"][0]
  vae = kl_vae.load(src)
  assert vae.fingerprint() == kl_vae.load(src).fingerprint()

  legacy = _copy(src, tmp_path / "legacy")
  tensors = load_file(os.path.join(legacy, WEIGHTS))
  names = {
      "to_q": "query",
      "to_k": "key",
      "to_v": "value",
      "to_out.0": "proj_attn",
  }
  for key in list(tensors):
    for new, old in names.items():
      if f".{new}." in key:
        tensors[key.replace(f".{new}.", f".{old}.")] = tensors.pop(key)
  save_file(tensors, os.path.join(legacy, WEIGHTS))
  old = kl_vae.load(legacy)
  assert old.fingerprint() == vae.fingerprint()

  changed = _copy(src, tmp_path / "changed")
  tensors = load_file(os.path.join(changed, WEIGHTS))
  tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 1e-3
  save_file(tensors, os.path.join(changed, WEIGHTS))
  assert kl_vae.load(changed).fingerprint() != vae.fingerprint()

  rescaled = _copy(src, tmp_path / "rescaled")
  cfg_path = os.path.join(rescaled, kl_vae.CONFIG_FILE)
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["scaling_factor"] = 0.5
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  assert kl_vae.load(rescaled).fingerprint() != vae.fingerprint()


def test_described_vae_has_the_loaded_ones_shapes(vaes):
  """What ahead-of-time compilation builds from config.json alone."""
  for path, _ in vaes.values():
    loaded, _ = _load(path)
    described = kl_vae.describe(path)
    shape = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
    assert shape(described.params) == shape(loaded.params)
    assert described.latent_shape(64) == loaded.latent_shape(64)
    assert described.scaling_factor == loaded.scaling_factor
