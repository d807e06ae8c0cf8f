"""Train on your own images: a folder of images with their captions.

  python -m txt2img_jax.main --config=configs/folder.py --config.data.path=DIR

DIR holds the images (subfolders allowed) and a `metadata.jsonl` (or
`metadata.csv`) whose rows give `file_name` (relative path) and the caption
(`text`, or --config.data.caption_column=...; a list of captions is allowed,
one is drawn per example). The first run prepares the folder once into
ArrayRecord shards under the data dir and writes `prepare_report.json`
(bad files are counted there, never fatal); later runs reuse them.

The recipe is restart.py's at 64 px in pixel space (space-to-depth by 4:
a 16x16x48 latent, 64 tokens of 8x8 pixels, so a step costs what the shapes
run's does), with the embedded word-level text encoder trained with the
rest, and three changes that real images need (docs/own_images.md, "Real
images"; on handwritten digits the choices of restart.py's velocity recipe
drew a mosaic of 8-pixel blocks, val/blockiness 22x the data's at step 500):
- flow.predict = "image" (restart.py's default too since it helped the
  shapes; set here so this recipe keeps it): the DiT outputs the image
  latent and the velocity follows from it. A token here is 192 numbers of
  pixels; predicting the velocity, the network must also reproduce the
  source's noise in all of them, and what it misses stays in the image as
  blocks and grain. A clean image is far easier to predict (blockiness 2.2
  -> 0.95 at step 500);
- flow.out_head = "overlap": every latent cell is decoded from its own token
  and its neighbours', so tokens agree where they meet; DiT's linear head
  decodes each token alone (blockiness 22 -> 3.6 at step 500);
- t ~ U[0, 1] instead of restart.py's curriculum, which starts on the text
  end and ends on logit-normal(-1, 1.5): it draws t > 0.75 (where a real
  image's fine detail and the last noise are learnt) ~4% of the time, a
  fine trade for flat shapes, not for real images (3.6 -> 2.2 at step 500).
1,000 steps (36 passes over the digits' 1.8k images): the samples are as
smooth as the data from step 250 on.
For a pretrained latent space and text encoder:
  --config.autoencoder.kind=kl_vae --config.autoencoder.path=VAE_DIR
  --config.text_encoder.name=CLIP_OR_T5_DIR
Evaluation: a sample grid on fixed prompts (--config.eval.prompts=FILE, one
prompt a line; default: the first val captions) and the validation flow
loss per t bucket. Every field is documented in base.py.
"""

import ml_collections

from configs import restart
from configs import base


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = restart.get_config()
  c.name = "folder"
  c.data.name = "folder"
  c.data.path = ""  # Required: --config.data.path=DIR.
  c.data.image_size = 64
  c.data.max_len = 32  # Words + BOS/EOS; longer captions are cut.
  c.data.val_fraction = 0.02
  # With a frozen text encoder (text_encoder.name), cache its features of
  # every caption once in prepare; training never runs the encoder.
  c.data.cache_text = True
  c.autoencoder.factor = 4  # 64x64x3 -> 16x16x48.
  c.total_steps = 1000
  c.checkpoint_every = 250
  c.sample_every = 250
  c.eval_every = 250
  c.optim.schedule.warmup_steps = 50
  c.optim.schedule.t0 = c.total_steps - c.optim.schedule.warmup_steps
  c.time.sampler = ml_collections.ConfigDict(
      dict(kind="uniform", t_min=0.0, t_max=1.0)
  )
  c.flow.out_head = "overlap"
  c.flow.predict = "image"
  c.eval.kind = "prompts"
  c.eval.num = 256  # Validation examples for the val loss.
  c.eval.batch_size = 64
  c.sample.grid_size = 16

  if variant == "tiny":
    base.shrink(c)
    c.data.image_size = 16
    c.data.val_count = 4
    c.autoencoder.factor = 2
    c.optim.schedule.update(warmup_steps=1, t0=c.total_steps - 1)
    c.eval.num = 4
    c.eval.batch_size = 4
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}; known: 'tiny'")
  return c
