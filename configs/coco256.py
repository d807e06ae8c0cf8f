"""CrossFlow's 256 px setting, for a pod: COCO captions (TFDS), an SD-style
KL-VAE latent (4x32x32), a frozen CLIP text encoder, a DiT-XL/2-sized flow.

  python -m txt2img_jax.main --config=configs/coco256.py \
      --config.autoencoder.path=/path/to/sd-vae --config.text_encoder.name=/path/to/clip \
      --config.data.tfds_data_dir=gs://BUCKET/tfds --workdir=gs://BUCKET/runs/coco256

Sources of the numbers (checked ones say so; the rest are this project's
choices for a first pod run, not tuned):
- 256 px through SD's VAE -> 32x32x4 latents (SD's VAE downsamples by 8;
  its config.json has latent_channels 4 and scaling_factor 0.18215).
- Flow DiT at DiT-XL/2's size (Peebles & Xie 2023: width 1152, depth 28,
  16 heads, patch 2 -> 256 tokens on a 32x32 latent).
- Batch 1024, bf16: the CrossFlow 256 px setting as the project's issue on
  real data states it (not re-checked against the paper here).
- Learning rates: the diagnosis note's full-scale ceilings (text side
  <= 2e-4, flow <= 1e-4), warmup + cosine.
- Sampling: Euler, 50 steps, CFG 7 (CrossFlow's defaults, per DESIGN.md).
Needs the prepared TFDS `coco_captions` (the user's own copy) and the two
local weight folders; nothing is downloaded.
"""

import ml_collections

from configs import restart


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = restart.get_config()
  c.name = "coco256"
  c.dtype = "bfloat16"
  c.batch_size = 1024
  c.total_steps = 300_000
  c.log_every = 100
  c.checkpoint_every = 5000
  c.sample_every = 5000
  c.eval_every = 10_000

  c.data.name = "tfds"
  c.data.tfds_name = "coco_captions"
  c.data.image_key = "image"
  c.data.caption_key = "captions/text"  # Five captions per image.
  c.data.train_split = "train"
  c.data.val_split = "val"
  c.data.image_size = 256
  c.data.max_len = 77  # CLIP's position table.
  c.data.read_threads = 16
  c.data.prefetch = 8

  c.autoencoder.kind = "kl_vae"
  c.autoencoder.path = ""  # Required: a diffusers AutoencoderKL folder.
  c.data.cache_latents = True

  c.text_encoder.name = ""  # Set to a local CLIP text model folder.
  # CrossFlow (like U-ViT) extracts the frozen text features of all five
  # COCO captions once and draws one per step; so does prepare here.
  # CLIP-L: 77 x 768 float16 = 118 KB per caption, 590 KB per image.
  c.data.cache_text = True
  c.data.cache_captions = 5
  c.data.text_cache_dtype = "float16"

  c.head.token_transformer.update(
      width=768, depth=2, num_heads=12, reduced_width=16
  )
  c.flow.update(patch_size=2, width=1152, depth=28, num_heads=16)
  c.image_encoder.update(width=256, depth=4)

  c.optim.schedule = ml_collections.ConfigDict(
      dict(
          kind="warmup_cosine",
          warmup_steps=5000,
          decay_steps=c.total_steps,
          end_lr=1e-6,
      )
  )
  for group in ("text_encoder", "text_head", "image_encoder"):
    c.optim.groups[group].lr = 2e-4
  c.optim.groups.flow.lr = 1e-4
  c.time.sampler.blend_steps = c.total_steps

  c.sample.update(method="euler", num_steps=50, cfg_scale=7.0)
  c.eval.kind = "prompts"
  c.eval.num = 2048
  c.eval.batch_size = 64

  if variant:
    raise ValueError(f"unknown config variant {variant!r}; coco256 has none")
  return c
