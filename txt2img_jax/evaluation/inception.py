"""The FID Inception network in JAX: pool3 features (2048) of an image.

FID is defined on the InceptionV3 of TensorFlow's 2015-12-05 release: the
network of the original FID code, and of `pytorch-fid` and `torch-fidelity`
through their port of its weights, `pt_inception-2015-12-05-6726825d.pth`.
This module runs that network from that file (read with numpy, no torch):

    --config.eval.fid_features=inception --config.eval.fid_weights=FILE

It differs from torchvision's InceptionV3 where the TensorFlow graph does:
the average pools of the A, C and first E blocks leave the padding out of
their mean, and the last E block max-pools. The input convention is
pytorch-fid's: images in [0, 1] resized to 299 x 299 by bilinear
interpolation (half-pixel centres, no antialiasing), then scaled to
[-1, 1]. clean-fid instead resizes uint8 images with PIL's bicubic filter;
its numbers differ slightly from pytorch-fid's, and ours follow
pytorch-fid's so that our FID is comparable with the FIDs papers report
through it. The parameters are the state dict itself, by its names
(`Mixed_5b.branch1x1.conv.weight`, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299
DIM = 2048
_EPS = 1e-3  # The batch norms' epsilon.


def _conv(p, name, x, stride=1, padding=(0, 0)):
  """BasicConv2d: conv (no bias) -> batch norm (running stats) -> ReLU."""
  w = p[f"{name}.conv.weight"]  # (O, I, kh, kw), as torch stores it.
  ph, pw = padding
  y = jax.lax.conv_general_dilated(
      x,
      w,
      window_strides=(stride, stride),
      padding=((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "OIHW", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
  )
  scale = p[f"{name}.bn.weight"] * jax.lax.rsqrt(
      p[f"{name}.bn.running_var"] + _EPS
  )
  shift = p[f"{name}.bn.bias"] - p[f"{name}.bn.running_mean"] * scale
  return jax.nn.relu(y * scale + shift)


def _max_pool(x, stride, pad=0):
  return jax.lax.reduce_window(
      x,
      -jnp.inf,
      jax.lax.max,
      (1, 3, 3, 1),
      (1, stride, stride, 1),
      ((0, 0), (pad, pad), (pad, pad), (0, 0)),
  )


def _avg_pool_valid_only(x):
  """3x3, stride 1, padding 1, the padding left out of each mean."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones(x.shape[1:3], x.dtype)[None, :, :, None]
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


def _block_a(p, n, x):
  b1 = _conv(p, f"{n}.branch1x1", x)
  b5 = _conv(p, f"{n}.branch5x5_1", x)
  b5 = _conv(p, f"{n}.branch5x5_2", b5, padding=(2, 2))
  b3 = _conv(p, f"{n}.branch3x3dbl_1", x)
  b3 = _conv(p, f"{n}.branch3x3dbl_2", b3, padding=(1, 1))
  b3 = _conv(p, f"{n}.branch3x3dbl_3", b3, padding=(1, 1))
  bp = _conv(p, f"{n}.branch_pool", _avg_pool_valid_only(x))
  return jnp.concatenate([b1, b5, b3, bp], axis=-1)


def _block_b(p, n, x):
  b3 = _conv(p, f"{n}.branch3x3", x, stride=2)
  bd = _conv(p, f"{n}.branch3x3dbl_1", x)
  bd = _conv(p, f"{n}.branch3x3dbl_2", bd, padding=(1, 1))
  bd = _conv(p, f"{n}.branch3x3dbl_3", bd, stride=2)
  return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


def _block_c(p, n, x):
  b1 = _conv(p, f"{n}.branch1x1", x)
  b7 = _conv(p, f"{n}.branch7x7_1", x)
  b7 = _conv(p, f"{n}.branch7x7_2", b7, padding=(0, 3))
  b7 = _conv(p, f"{n}.branch7x7_3", b7, padding=(3, 0))
  bd = _conv(p, f"{n}.branch7x7dbl_1", x)
  for i, pad in zip(range(2, 6), ((3, 0), (0, 3), (3, 0), (0, 3))):
    bd = _conv(p, f"{n}.branch7x7dbl_{i}", bd, padding=pad)
  bp = _conv(p, f"{n}.branch_pool", _avg_pool_valid_only(x))
  return jnp.concatenate([b1, b7, bd, bp], axis=-1)


def _block_d(p, n, x):
  b3 = _conv(p, f"{n}.branch3x3_1", x)
  b3 = _conv(p, f"{n}.branch3x3_2", b3, stride=2)
  b7 = _conv(p, f"{n}.branch7x7x3_1", x)
  b7 = _conv(p, f"{n}.branch7x7x3_2", b7, padding=(0, 3))
  b7 = _conv(p, f"{n}.branch7x7x3_3", b7, padding=(3, 0))
  b7 = _conv(p, f"{n}.branch7x7x3_4", b7, stride=2)
  return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


def _block_e(p, n, x, max_pool: bool):
  b1 = _conv(p, f"{n}.branch1x1", x)
  b3 = _conv(p, f"{n}.branch3x3_1", x)
  b3 = jnp.concatenate(
      [
          _conv(p, f"{n}.branch3x3_2a", b3, padding=(0, 1)),
          _conv(p, f"{n}.branch3x3_2b", b3, padding=(1, 0)),
      ],
      axis=-1,
  )
  bd = _conv(p, f"{n}.branch3x3dbl_1", x)
  bd = _conv(p, f"{n}.branch3x3dbl_2", bd, padding=(1, 1))
  bd = jnp.concatenate(
      [
          _conv(p, f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)),
          _conv(p, f"{n}.branch3x3dbl_3b", bd, padding=(1, 0)),
      ],
      axis=-1,
  )
  pooled = _max_pool(x, 1, pad=1) if max_pool else _avg_pool_valid_only(x)
  bp = _conv(p, f"{n}.branch_pool", pooled)
  return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def features(params: dict, images: jax.Array) -> jax.Array:
  """(B, H, W, 3) floats in [0, 1] -> (B, 2048) pool3 features."""
  b = images.shape[0]
  x = jax.image.resize(
      images.astype(jnp.float32),
      (b, SIZE, SIZE, 3),
      method="bilinear",
      antialias=False,
  )
  x = 2.0 * x - 1.0
  x = _conv(params, "Conv2d_1a_3x3", x, stride=2)
  x = _conv(params, "Conv2d_2a_3x3", x)
  x = _conv(params, "Conv2d_2b_3x3", x, padding=(1, 1))
  x = _max_pool(x, 2)
  x = _conv(params, "Conv2d_3b_1x1", x)
  x = _conv(params, "Conv2d_4a_3x3", x)
  x = _max_pool(x, 2)
  for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = _block_a(params, name, x)
  x = _block_b(params, "Mixed_6a", x)
  for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = _block_c(params, name, x)
  x = _block_d(params, "Mixed_7a", x)
  x = _block_e(params, "Mixed_7b", x, max_pool=False)
  x = _block_e(params, "Mixed_7c", x, max_pool=True)
  return jnp.mean(x, axis=(1, 2))


def load_params(path: str) -> dict[str, np.ndarray]:
  """The network's float arrays from a torch.save'd state dict (numpy)."""
  from txt2img_jax.evaluation import torch_weights  # pylint: disable=g-import-not-at-top

  state = torch_weights.load_state_dict(path)
  needed = [k for k in state if k.startswith(("Conv2d_", "Mixed_"))]
  missing = [
      n
      for n in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight")
      if n not in state
  ]
  if missing:
    raise ValueError(
        f"{path} is not the FID Inception's state dict (no {missing[0]}); "
        "use pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release)"
    )
  return {
      k: np.asarray(state[k], np.float32)
      for k in needed
      if not k.endswith("num_batches_tracked")
  }
