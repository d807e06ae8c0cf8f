"""Model FLOPs of one train step, counted from the config (the MFU numerator).

The convention of PaLM (appendix B) and maxtext: only matmuls and convolutions
count, 2 FLOPs per multiply-add, attention's QK^T and AV included (full, not
causal), and a trainable part costs 3x its forward pass (forward, and a
backward with one matmul for the input gradient and one for the weight
gradient). A frozen part (optim.groups.<g>.trainable = False) counts its
forward pass only. Rematerialisation does not change the count: recomputed
work is not model work. Elementwise work (norms, activations, the optimizer,
EMA) is left out, which is why XLA's own count is a little higher at scale
and much higher for tiny models.

XLA's cost analysis is the cross-check on CPU. On GPU it misses the matmuls
it hands to cuBLAS, so it cannot be the numerator there.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from txt2img_jax.models import generator as generator_lib


@dataclasses.dataclass(frozen=True)
class Row:
  """Forward multiply-adds of one piece of the model for one example."""

  name: str  # 'module/part', e.g. 'flow/attention_scores'.
  group: str  # The optimizer group it belongs to (decides trainable).
  macs_per_example: float


def _self_attention(tokens: int, width: int) -> tuple[float, float]:
  """(q, k, v, out projections, QK^T + AV) multiply-adds of one self-attention layer."""
  return 4 * tokens * width**2, 2 * tokens**2 * width


def _cross_attention(
    queries: int, keys: int, width: int
) -> tuple[float, float]:
  return 2 * (queries + keys) * width**2, 2 * queries * keys * width


def _mlp(tokens: int, width: int, ratio: float) -> float:
  return 2 * tokens * width * int(width * ratio)


def _transformer(
    prefix: str,
    group: str,
    tokens: int,
    width: int,
    depth: int,
    ratio: float,
    context: int | None = None,
) -> list[Row]:
  """layers.TransformerBlock x depth: self- (or cross- to `context` tokens) attention + MLP."""
  if context is None:
    proj, scores = _self_attention(tokens, width)
  else:
    proj, scores = _cross_attention(tokens, context, width)
  return [
      Row(f"{prefix}/attention_proj", group, depth * proj),
      Row(f"{prefix}/attention_scores", group, depth * scores),
      Row(f"{prefix}/mlp", group, depth * _mlp(tokens, width, ratio)),
  ]


def _conv(
    out_h: int, out_w: int, k: int, c_in: int, c_out: int, groups: int = 1
) -> float:
  return out_h * out_w * k * k * (c_in // groups) * c_out


def _mlp_stack(
    in_width: int, hidden: int, num_layers: int
) -> tuple[float, int]:
  """Dense layers in_width -> hidden -> ... -> hidden; returns (macs, last width)."""
  macs, width = 0.0, in_width
  for _ in range(num_layers):
    macs += width * hidden
    width = hidden
  return macs, width


def text_encoder_rows(c: ml_collections.ConfigDict) -> list[Row]:
  """The embedded SmallTextEncoder (the token embedding is a gather, not a matmul)."""
  te = c.text_encoder
  return _transformer(
      "text_encoder",
      "text_encoder",
      c.data.max_len,
      te.width,
      te.depth,
      te.mlp_ratio,
  )


def text_head_rows(
    c: ml_collections.ConfigDict, latent_shape, text_width: int
) -> list[Row]:
  kind = c.head.kind
  f = generator_lib.head_kwargs(c.head)
  h, w, ch = latent_shape
  moments = h * w * 2 * ch
  length = c.data.max_len
  g = "text_head"
  if kind == "pooled_mlp":
    macs, last = _mlp_stack(text_width, f["hidden"], f["num_layers"])
    return [
        Row("text_head/mlp", g, macs),
        Row("text_head/out", g, last * moments),
    ]
  if kind == "token_transformer":
    width, red = f["width"], f["reduced_width"]
    return (
        [Row("text_head/in_proj", g, length * text_width * width)]
        + _transformer(
            "text_head", g, length, width, f["depth"], f["mlp_ratio"]
        )
        + [
            Row("text_head/reduce", g, length * width * red),
            Row("text_head/out", g, length * red * moments),
        ]
    )
  if kind == "grid_query":
    width = f["width"]
    gs = f["grid_size"]
    gh, gw = (h, w) if gs is None else (gs, gs)
    cells = (h // gh) * (w // gw)
    return (
        [Row("text_head/in_proj", g, length * text_width * width)]
        + _transformer(
            "text_head",
            g,
            gh * gw,
            width,
            f["depth"],
            f["mlp_ratio"],
            context=length,
        )
        + (
            [
                Row(
                    "text_head/query_self_attention",
                    g,
                    f["depth"] * sum(_self_attention(gh * gw, width)),
                )
            ]
            if f.get("self_attention", False)
            else []
        )
        + [
            Row("text_head/out", g, gh * gw * width * cells * 2 * ch),
            Row(
                "text_head/smooth",
                g,
                f["num_smooth"] * _conv(h, w, 3, 2 * ch, 2 * ch, groups=2 * ch),
            ),
        ]
    )
  if kind == "token_splat":
    width, k = f["width"], f["content_width"]
    gs = f["grid_size"]
    gh, gw = (h, w) if gs is None else (gs, gs)
    cells = (h // gh) * (w // gw)
    return (
        [Row("text_head/in_proj", g, length * text_width * width)]
        + _transformer(
            "text_head", g, length, width, f["depth"], f["mlp_ratio"]
        )
        + [
            Row("text_head/where_what", g, length * width * (gh * gw + k)),
            Row("text_head/splat", g, length * gh * gw * k),
            Row("text_head/out", g, gh * gw * k * cells * 2 * ch),
            Row(
                "text_head/smooth",
                g,
                f["num_smooth"] * _conv(h, w, 3, 2 * ch, 2 * ch, groups=2 * ch),
            ),
        ]
    )
  if kind == "mlp_conv":
    cw = f["conv_width"]
    macs, last = _mlp_stack(text_width, f["hidden"], f["num_layers"])
    blocks = f["num_blocks"] * (
        _conv(h, w, 3, cw, cw, groups=cw) + _conv(h, w, 1, cw, cw)
    )
    return [
        Row("text_head/mlp", g, macs + last * h * w * cw),
        Row("text_head/conv_blocks", g, blocks),
        Row("text_head/out", g, _conv(h, w, 1, cw, 2 * ch)),
    ]
  raise ValueError(f"head.kind={kind!r}: no FLOP count for it")


def image_encoder_rows(c: ml_collections.ConfigDict, latent_shape) -> list[Row]:
  """The contrastive tower: 3x3 stem, stride-2 3x3 convs (SAME), projection to H*W*C."""
  h, w, ch = latent_shape
  width = c.image_encoder.width
  macs = _conv(h, w, 3, ch, width)
  for _ in range(c.image_encoder.depth):
    h, w = math.ceil(h / 2), math.ceil(w / 2)
    macs += _conv(h, w, 3, width, width)
  g = "image_encoder"
  return [
      Row("image_encoder/convs", g, macs),
      Row("image_encoder/proj", g, width * math.prod(latent_shape)),
  ]


def flow_rows(c: ml_collections.ConfigDict, latent_shape) -> list[Row]:
  """The DiT: patch embedding, time MLP, adaLN-Zero blocks, final layer."""
  h, w, ch = latent_shape
  fl = c.flow
  p, width, depth = fl.patch_size, fl.width, fl.depth
  tokens = (h // p) * (w // p)
  patch = p * p * ch
  proj, scores = _self_attention(tokens, width)
  freq = fl.get("time_embed_dim") or width
  g = "flow"
  return [
      Row(
          "flow/embed", g, tokens * patch * width + freq * width + width * width
      ),
      Row("flow/modulation", g, depth * width * 6 * width + width * 2 * width),
      Row("flow/attention_proj", g, depth * proj),
      Row("flow/attention_scores", g, depth * scores),
      Row("flow/mlp", g, depth * _mlp(tokens, width, fl.mlp_ratio)),
      Row("flow/final", g, tokens * width * patch),
  ]


def rows(
    config: ml_collections.ConfigDict,
    latent_shape,
    text_width: int | None = None,
    embedded_text_encoder: bool = True,
) -> list[Row]:
  """Every counted piece of one train step's forward pass, per example.

  A frozen pretrained text encoder (config.text_encoder.name) is not counted: its
  architecture is not in the config. Pass its width as text_width.
  """
  c = config
  out = []
  if embedded_text_encoder:
    out += text_encoder_rows(c)
    text_width = c.text_encoder.width
  elif text_width is None:
    raise ValueError(
        "text_width is required when the text encoder is not embedded"
    )
  text_rows = list(out) + text_head_rows(c, latent_shape, text_width)
  out = list(text_rows)
  negatives = bool(c.loss.hard_negatives)
  if negatives:  # Every caption's hard negative runs the text side again.
    out += [
        Row("negatives/" + r.name, r.group, r.macs_per_example)
        for r in text_rows
    ]
  if c.loss.clip_target == "tower":  # Else XLA drops it.
    out += image_encoder_rows(c, latent_shape)
  out += flow_rows(c, latent_shape)
  # The contrastive logits: every z_text (and hard negative) against every image
  # embedding of the batch, so per example it is batch_size x H*W*C multiply-adds
  # (twice with negatives). Trained through both towers.
  out.append(
      Row(
          "contrastive/logits",
          "text_head",
          (1 + negatives) * c.batch_size * math.prod(latent_shape),
      )
  )
  return out


def _trainable(config: ml_collections.ConfigDict, group: str) -> bool:
  groups = config.optim.groups
  return bool(groups[group].trainable) if group in groups else True


def train_step_flops(
    config: ml_collections.ConfigDict,
    latent_shape,
    text_width: int | None = None,
    embedded_text_encoder: bool = True,
) -> tuple[float, dict[str, float]]:
  """(model FLOPs of one train step over the global batch, FLOPs per row name)."""
  per_row = {}
  for r in rows(config, latent_shape, text_width, embedded_text_encoder):
    passes = 3 if _trainable(config, r.group) else 1
    per_row[r.name] = 2.0 * r.macs_per_example * config.batch_size * passes
  return sum(per_row.values()), per_row


def by_module(per_row: dict[str, float]) -> dict[str, float]:
  """Sums rows by their module (the part before '/')."""
  out: dict[str, float] = {}
  for name, v in per_row.items():
    module = name.split("/")[0]
    out[module] = out.get(module, 0.0) + v
  return out
