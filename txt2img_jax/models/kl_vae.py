"""A pretrained KL-VAE (diffusers `AutoencoderKL` layout) in Flax, for training in its latent space.

Loads a local diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`) with numpy
only: no torch at run time. Covers Stable Diffusion's 4-channel VAE and the SD3 / FLUX 16-channel
ones (no quant convs, a `shift_factor`). Tensors are NHWC; the weights stay float32 and the
activations run in the `dtype` given to `load`.

The latent it hands out is in *scaled* units, as diffusers pipelines use it:
`z' = (z - shift_factor) * scaling_factor`. The trainer standardises that per channel on its data
as it does for any autoencoder; the scaling only keeps the numbers near unit size.
"""

import dataclasses
import hashlib
import json
import math
import re
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from txt2img_jax.models import kl_vae_layers
from txt2img_jax.utils import paths

# The architecture lives in kl_vae_layers; these names are part of this module's interface.
Moments = kl_vae_layers.Moments
VAEConfig = kl_vae_layers.VAEConfig
AutoencoderKLModule = kl_vae_layers.AutoencoderKLModule

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# diffusers' AutoencoderKL defaults, for keys a config.json leaves out.
_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(64,),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.18215,
    shift_factor=None,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
    act_fn="silu",
)
# diffusers clamps the log-variance before use; so do we, so both give the same moments.
_LOGVAR_RANGE = (-30.0, 20.0)
# Attention names of older diffusers checkpoints, still found in published VAE folders.
_LEGACY_NAMES = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
}


# ------------------------------------------------------------------------------------ the facade


@dataclasses.dataclass(frozen=True, eq=False)
class KLVAE:
  """A loaded KL-VAE with the project's autoencoder interface, in scaled latent units.

  `params` are float32 numpy arrays on the host: the caller places them (device_put / sharding)
  and passes them to every call as a jit argument, so they are never baked into a compiled step
  as constants.
  """

  params: Any
  scaling_factor: float
  shift_factor: float
  config: VAEConfig
  dtype: str
  module: AutoencoderKLModule
  weights_hash: str

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.config.block_out_channels) - 1)

  def latent_shape(self, image_size: int) -> Tuple[int, int, int]:
    f = self.downsample_factor
    if image_size % f:
      raise ValueError(
          f"image size {image_size} is not divisible by the VAE downsample factor {f}"
      )
    return (image_size // f, image_size // f, self.config.latent_channels)

  def encode_moments(self, params, images: jax.Array) -> Moments:
    """images in [0, 1], (B, S, S, C) -> (mean', logvar') in scaled latent units, float32."""
    if images.ndim != 4 or images.shape[-1] != self.config.in_channels:
      raise ValueError(
          f"images must be (B, H, W, {self.config.in_channels}), got {images.shape}"
      )
    x = jnp.asarray(images, self.dtype) * 2.0 - 1.0
    mean, logvar = self.module.apply(
        {"params": params}, x, method=AutoencoderKLModule.encode
    )
    mean, logvar = mean.astype(jnp.float32), jnp.clip(
        logvar.astype(jnp.float32), *_LOGVAR_RANGE
    )
    scale = self.scaling_factor
    return (mean - self.shift_factor) * scale, logvar + 2.0 * math.log(scale)

  def sample(self, moments: Moments, rng: jax.Array) -> jax.Array:
    mean, logvar = moments
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(
        rng, mean.shape, mean.dtype
    )

  def decode(self, params, latent: jax.Array) -> jax.Array:
    """Scaled latent (B, h, w, C) -> images in [0, 1], float32."""
    z = (
        jnp.asarray(latent, jnp.float32) / self.scaling_factor
        + self.shift_factor
    )
    x = self.module.apply(
        {"params": params},
        z.astype(self.dtype),
        method=AutoencoderKLModule.decode,
    )
    return jnp.clip((x.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)

  def fingerprint(self) -> str:
    """Stable hash of the architecture, the scaling, the compute dtype and every weight.

    Meant to key latent caches, so the dtype is in it: bfloat16 latents differ from float32 ones
    by ~1e-2, and a cache must hold what the current encode path would give.
    """
    meta = json.dumps(
        {
            "config": dataclasses.asdict(self.config),
            "dtype": self.dtype,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
        },
        sort_keys=True,
    )
    return hashlib.sha256((meta + self.weights_hash).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- loading


def _flax_to_torch_name(path: Tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'resnets_1', 'conv1', 'kernel') -> 'encoder.down_blocks.0.
  resnets.1.conv1.weight' (linen names list members `name_i`; diffusers `name.i`).
  """
  *modules, leaf = path
  modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
  return ".".join(modules + ["bias" if leaf == "bias" else "weight"])


def _to_torch_layout(shape: Sequence[int]) -> Tuple[int, ...]:
  if len(shape) == 4:  # conv HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:  # dense (in, out) -> (out, in)
    return (shape[1], shape[0])
  return tuple(shape)


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _read_config(path: str) -> Tuple[VAEConfig, float, float]:
  config_path = paths.join(path, CONFIG_FILE)
  if not paths.isfile(config_path):
    raise FileNotFoundError(
        f"{path!r} has no {CONFIG_FILE}: point the KL-VAE path at a diffusers "
        'AutoencoderKL folder (the "vae" subfolder of a pipeline)'
    )
  try:
    raw = json.loads(paths.read_text(config_path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{config_path} must hold a JSON object")
  cls = raw.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise ValueError(f"{config_path} describes a {cls}, not an AutoencoderKL")
  get = lambda key: _DEFAULTS[key] if raw.get(key) is None else raw[key]
  widths = tuple(int(w) for w in get("block_out_channels"))
  for key, want in (
      ("down_block_types", "DownEncoderBlock2D"),
      ("up_block_types", "UpDecoderBlock2D"),
  ):
    kinds = raw.get(key, [want] * len(widths))
    if len(kinds) != len(widths) or any(k != want for k in kinds):
      raise ValueError(
          f"{config_path}: {key} must be {len(widths)} x {want!r} (one per "
          f"block_out_channels entry), got {kinds}"
      )
  if get("act_fn") != "silu":
    raise ValueError(
        f'{config_path}: act_fn {get("act_fn")!r} is not supported (only "silu")'
    )
  config = VAEConfig(
      in_channels=int(get("in_channels")),
      out_channels=int(get("out_channels")),
      block_out_channels=widths,
      layers_per_block=int(get("layers_per_block")),
      latent_channels=int(get("latent_channels")),
      norm_num_groups=int(get("norm_num_groups")),
      use_quant_conv=bool(get("use_quant_conv")),
      use_post_quant_conv=bool(get("use_post_quant_conv")),
      mid_block_add_attention=bool(get("mid_block_add_attention")),
  )
  bad = [w for w in widths if w % config.norm_num_groups]
  if bad:
    raise ValueError(
        f"{config_path}: block_out_channels {bad} not divisible by norm_num_groups "
        f"{config.norm_num_groups}"
    )
  shift = raw.get("shift_factor")
  return (
      config,
      float(get("scaling_factor")),
      0.0 if shift is None else float(shift),
  )


def _read_weights(path: str) -> Dict[str, np.ndarray]:
  weights_path = paths.join(path, WEIGHTS_FILE)
  if not paths.isfile(weights_path):
    present = sorted(
        f for f in paths.listdir(path) if f.endswith((".safetensors", ".bin"))
    )
    raise FileNotFoundError(
        f'{path!r} has no {WEIGHTS_FILE} (found: {present or "nothing"}); '
        "re-save the VAE with safetensors in float32"
    )
  from txt2img_jax.models import text_encoder_weights  # pylint: disable=g-import-not-at-top

  try:
    tensors = text_encoder_weights.read_safetensors(weights_path)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"cannot read {weights_path}: {e}") from None
  renamed = {}
  for name, array in tensors.items():
    for old, new in _LEGACY_NAMES.items():
      name = name.replace(old, new)
    renamed[name] = array
  return renamed


def _expected_shapes(
    module: AutoencoderKLModule, config: VAEConfig
) -> Dict[str, Tuple]:
  side = 2 ** (len(config.block_out_channels) - 1)
  x = jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _list(title: str, items: Sequence[str], limit: int = 12) -> str:
  shown = ", ".join(items[:limit]) + (
      f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  )
  return f"{len(items)} {title}: {shown}"


def _nest(flat: Dict[Tuple[str, ...], Any]) -> Dict[str, Any]:
  """{('encoder', 'conv_in', 'kernel'): leaf} -> the nested params tree."""
  tree = {}
  for names, leaf in flat.items():
    node = tree
    *parents, last = names
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return tree


def describe(path: str, dtype: str = "float32") -> KLVAE:
  """The VAE of a folder from its config.json alone: `params` are
  `jax.ShapeDtypeStruct`s (float32, as `load` gives them), no weights read.
  For compiling a step ahead of time (train/aot_lower.py)."""
  config, scaling_factor, shift_factor = _read_config(path)
  module = AutoencoderKLModule(config, jnp.dtype(dtype))
  params = _nest(
      {
          names: jax.ShapeDtypeStruct(shape, jnp.float32)
          for names, shape in _expected_shapes(module, config).items()
      }
  )
  return KLVAE(
      params=params,
      scaling_factor=scaling_factor,
      shift_factor=shift_factor,
      config=config,
      dtype=dtype,
      module=module,
      weights_hash="",
  )


def load(path: str, dtype: str = "float32") -> KLVAE:
  """Load a diffusers AutoencoderKL folder; compute in `dtype` ('float32' or 'bfloat16')."""
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(
        f'KL-VAE dtype must be "float32" or "bfloat16", got {dtype!r}'
    )
  if not paths.isdir(path):
    raise FileNotFoundError(
        f"KL-VAE folder {path!r} does not exist: give a diffusers "
        f"AutoencoderKL folder ({CONFIG_FILE} + {WEIGHTS_FILE})"
    )
  config, scaling_factor, shift_factor = _read_config(path)
  module = AutoencoderKLModule(config, jnp.dtype(dtype))
  expected = _expected_shapes(module, config)
  tensors = _read_weights(path)

  by_name = {_flax_to_torch_name(p): p for p in expected}
  missing = sorted(set(by_name) - set(tensors))
  unexpected = sorted(set(tensors) - set(by_name))
  misshaped = sorted(
      f"{n} {tuple(tensors[n].shape)} (want {_to_torch_layout(expected[by_name[n]])})"
      for n in set(by_name) & set(tensors)
      if tuple(tensors[n].shape) != _to_torch_layout(expected[by_name[n]])
  )
  if missing or unexpected or misshaped:
    problems = [
        _list(t, items)
        for t, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if items
    ]
    raise ValueError(
        f"{paths.join(path, WEIGHTS_FILE)} does not match its {CONFIG_FILE}: "
        + "; ".join(problems)
    )

  flat, digest = {}, hashlib.sha256()
  for name in sorted(by_name):
    array = np.ascontiguousarray(
        _from_torch_layout(np.asarray(tensors[name], np.float32))
    )
    digest.update(name.encode())
    digest.update(array.tobytes())
    flat[by_name[name]] = array
  return KLVAE(
      params=_nest(flat),
      scaling_factor=scaling_factor,
      shift_factor=shift_factor,
      config=config,
      dtype=dtype,
      module=module,
      weights_hash=digest.hexdigest(),
  )
