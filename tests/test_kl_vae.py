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
import torch
from diffusers import AutoencoderKL
from safetensors.numpy import load_file, save_file

from txt2img_jax.models import kl_vae

SIZE = 16
WEIGHTS = kl_vae.WEIGHTS_FILE
VARIANTS = {
    # Stable Diffusion's layout: 4 latent channels, quant convs, no shift.
    'sd': dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
               latent_channels=4, scaling_factor=0.18215),
    # SD3 / FLUX's layout: 16 channels, no quant convs, a shift; three levels, two resnets each.
    'flux': dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                 latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159),
    'no_mid_attention': dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                             latent_channels=4, mid_block_add_attention=False),
}


def _save_random_vae(path, **kwargs):
  n = len(kwargs['block_out_channels'])
  torch.manual_seed(0)
  model = AutoencoderKL(down_block_types=('DownEncoderBlock2D',) * n,
                        up_block_types=('UpDecoderBlock2D',) * n, sample_size=SIZE, **kwargs)
  # Move every weight off its init (norms start at exactly 1 / 0) so a wrong mapping shows.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.eval().save_pretrained(path)
  return model


@pytest.fixture(scope='module')
def vaes(tmp_path_factory):
  out = {}
  for name, kwargs in VARIANTS.items():
    path = str(tmp_path_factory.mktemp(f'vae_{name}'))
    out[name] = (path, _save_random_vae(path, **kwargs))
  return out


@pytest.fixture(scope='module')
def images():
  return np.random.RandomState(0).rand(2, SIZE, SIZE, 3).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize('name', list(VARIANTS))
def test_matches_diffusers(vaes, images, name):
  path, ref = vaes[name]
  vae = kl_vae.load(path)
  # diffusers' defaults where a variant leaves them out.
  scale = VARIANTS[name].get('scaling_factor', 0.18215)
  shift = VARIANTS[name].get('shift_factor', 0.0)
  assert (vae.scaling_factor, vae.shift_factor) == pytest.approx((scale, shift))
  with torch.no_grad():
    dist = ref.encode(_nchw(images * 2 - 1)).latent_dist
  ref_mean, ref_logvar = _nhwc(dist.mean), _nhwc(dist.logvar)

  mean, logvar = vae.module.apply({'params': vae.params}, jnp.asarray(images * 2 - 1),
                                  method=kl_vae.AutoencoderKLModule.encode)
  assert _rel(mean, ref_mean) <= 1e-4 and _rel(logvar, ref_logvar) <= 1e-4
  mean_s, logvar_s = vae.encode_moments(vae.params, jnp.asarray(images))
  assert _rel(mean_s, (ref_mean - shift) * scale) <= 1e-4
  assert _rel(logvar_s, ref_logvar + 2 * math.log(scale)) <= 1e-4

  latent = np.asarray(mean_s) + 0.5 * np.random.RandomState(1).randn(*mean_s.shape)
  latent = latent.astype(np.float32)
  with torch.no_grad():
    ref_x = _nhwc(ref.decode(_nchw(latent / scale + shift)).sample)
  raw = vae.module.apply({'params': vae.params}, jnp.asarray(latent / scale + shift),
                         method=kl_vae.AutoencoderKLModule.decode)
  assert _rel(raw, ref_x) <= 1e-4
  decoded = vae.decode(vae.params, jnp.asarray(latent))
  assert _rel(decoded, np.clip((ref_x + 1) / 2, 0, 1)) <= 1e-4
  assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0


def test_latent_shape_and_jitted_round_trip(vaes, images):
  vae = kl_vae.load(vaes['flux'][0])
  assert vae.latent_shape(SIZE) == (SIZE // 4, SIZE // 4, 16)
  with pytest.raises(ValueError, match='divisible'):
    vae.latent_shape(SIZE + 2)

  @jax.jit
  def round_trip(params, x, rng):
    latent = vae.sample(vae.encode_moments(params, x), rng)
    return latent, vae.decode(params, latent)

  rng = jax.random.PRNGKey(0)
  latent, out = round_trip(vae.params, images, rng)
  assert latent.shape == (2,) + vae.latent_shape(SIZE)
  assert out.shape == images.shape and out.dtype == jnp.float32
  # Params are an argument, not baked-in constants: new values, same compiled function.
  zeroed = jax.tree.map(np.zeros_like, vae.params)
  latent0, _ = round_trip(zeroed, images, rng)
  assert round_trip._cache_size() == 1
  assert not np.allclose(latent0, latent)


def test_sample_draws_from_the_moments():
  vae = kl_vae.KLVAE(params=None, scaling_factor=1.0, shift_factor=0.0,
                     config=kl_vae.VAEConfig(), dtype='float32', module=None, weights_hash='')
  mean = jnp.full((4096, 1, 1, 1), 2.0)
  z = np.asarray(vae.sample((mean, jnp.full_like(mean, math.log(0.25))), jax.random.PRNGKey(0)))
  assert abs(z.mean() - 2.0) < 0.05 and abs(z.std() - 0.5) < 0.05


def test_bfloat16_runs_close_to_float32(vaes, images):
  path = vaes['sd'][0]
  f32, bf16 = kl_vae.load(path), kl_vae.load(path, dtype='bfloat16')
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(bf16.params))
  m32, _ = f32.encode_moments(f32.params, images)
  m16, lv16 = jax.jit(bf16.encode_moments)(bf16.params, images)
  assert m16.dtype == jnp.float32 and np.isfinite(np.asarray(lv16)).all()
  assert _rel(m16, m32) < 5e-2
  x16 = jax.jit(bf16.decode)(bf16.params, m32)
  x32 = f32.decode(f32.params, m32)
  assert x16.dtype == jnp.float32 and np.abs(np.asarray(x16) - np.asarray(x32)).max() < 5e-2
  assert bf16.fingerprint() == f32.fingerprint()  # same weights: a latent cache is shared


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_load_errors(vaes, tmp_path):
  src = vaes['sd'][0]
  with pytest.raises(FileNotFoundError, match='does not exist'):
    kl_vae.load(str(tmp_path / 'nowhere'))
  with pytest.raises(ValueError, match='dtype'):
    kl_vae.load(src, dtype='float16')

  no_config = _copy(src, tmp_path / 'no_config')
  os.remove(os.path.join(no_config, kl_vae.CONFIG_FILE))
  with pytest.raises(FileNotFoundError, match='config.json'):
    kl_vae.load(no_config)

  no_weights = _copy(src, tmp_path / 'no_weights')
  os.remove(os.path.join(no_weights, WEIGHTS))
  with pytest.raises(FileNotFoundError, match=WEIGHTS):
    kl_vae.load(no_weights)

  bad = _copy(src, tmp_path / 'bad')
  tensors = load_file(os.path.join(bad, WEIGHTS))
  tensors['decoder.conv_in.weight'] = tensors['decoder.conv_in.weight'][:, :3]
  tensors['encoder.extra.weight'] = np.zeros(3, np.float32)
  del tensors['quant_conv.bias']
  save_file(tensors, os.path.join(bad, WEIGHTS))
  with pytest.raises(ValueError) as err:
    kl_vae.load(bad)
  msg = str(err.value)
  assert '\n' not in msg
  assert '1 missing: quant_conv.bias' in msg and '1 unexpected: encoder.extra.weight' in msg
  assert '1 mis-shaped: decoder.conv_in.weight (16, 3, 3, 3) (want (16, 4, 3, 3))' in msg

  wrong_kind = _copy(src, tmp_path / 'wrong_kind')
  cfg_path = os.path.join(wrong_kind, kl_vae.CONFIG_FILE)
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg['up_block_types'] = ['UpDecoderBlock2D', 'AttnUpDecoderBlock2D']
  with open(cfg_path, 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match='up_block_types'):
    kl_vae.load(wrong_kind)


def test_legacy_attention_names_and_fingerprint(vaes, tmp_path):
  src = vaes['sd'][0]
  vae = kl_vae.load(src)
  assert vae.fingerprint() == kl_vae.load(src).fingerprint()

  legacy = _copy(src, tmp_path / 'legacy')
  tensors = load_file(os.path.join(legacy, WEIGHTS))
  names = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  for key in list(tensors):
    for new, old in names.items():
      if f'.{new}.' in key:
        tensors[key.replace(f'.{new}.', f'.{old}.')] = tensors.pop(key)
  save_file(tensors, os.path.join(legacy, WEIGHTS))
  old = kl_vae.load(legacy)
  assert old.fingerprint() == vae.fingerprint()

  changed = _copy(src, tmp_path / 'changed')
  tensors = load_file(os.path.join(changed, WEIGHTS))
  tensors['decoder.conv_out.bias'] = tensors['decoder.conv_out.bias'] + 1e-3
  save_file(tensors, os.path.join(changed, WEIGHTS))
  assert kl_vae.load(changed).fingerprint() != vae.fingerprint()

  rescaled = _copy(src, tmp_path / 'rescaled')
  cfg_path = os.path.join(rescaled, kl_vae.CONFIG_FILE)
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg['scaling_factor'] = 0.5
  with open(cfg_path, 'w') as f:
    json.dump(cfg, f)
  assert kl_vae.load(rescaled).fingerprint() != vae.fingerprint()
