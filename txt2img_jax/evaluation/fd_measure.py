"""The Fréchet distance and KID of a run's samples, at every evaluation.

The first `eval.fid_num` records of `eval.fid_split` are the reference: their
images' feature statistics are computed once and cached beside the prepared
data (`<prepared dir>/fid_stats/`, keyed by the feature network and its
weights hash, the input size, the split and the number of images), and
their captions are what the run draws for. Logged as `val/fd_<net>`,
`val/kid_<net>` (and `_std`), with `val/fid_num` the number of images.
"""

from __future__ import annotations

import io

from absl import logging
import jax
import numpy as np

from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.evaluation import features as features_lib
from txt2img_jax.evaluation import fid
from txt2img_jax.utils import paths

STATS_DIR = "fid_stats"
KID_ROWS = 2000  # Feature rows of each set kept for KID.


def _records(data, split: str, num: int, batch_size: int):
  """(images float32 in [0, 1], captions) of the first `num` records, in
  chunks (a large reference never sits in memory whole)."""
  source = data.as_data_source(split=split)
  decode = data.decode_transform()
  for start in range(0, num, batch_size):
    recs = [
        decode.map(source[i])
        for i in range(start, min(num, start + batch_size))
    ]
    yield (
        np.stack([r["image"] for r in recs]).astype(np.float32),
        [r["captions"][0] for r in recs],
    )


def stats_path(
    data,
    feats: features_lib.ImageFeatures,
    split: str,
    num: int,
    image_size: int,
) -> str:
  return paths.join(
      data.out_dir,
      STATS_DIR,
      f"{feats.key()}_s{image_size}_{split}_n{num}.npz",
  )


class FdMeasure:
  """`measure(images_for)`: FD and KID of the images drawn for the reference
  captions (`images_for(ids, mask)`) against the reference images."""

  def __init__(self, config, data, tokenizer):
    e = config.eval
    self.enabled = bool(e.fid_features) and hasattr(data, "out_dir")
    if not self.enabled:
      return
    size = data.split_size(e.fid_split)
    self.num = min(e.fid_num, size)
    if self.num < 2:
      logging.info("no FD/KID: split %r has %d record(s)", e.fid_split, size)
      self.enabled = False
      return
    self.features = features_lib.load(
        e.fid_features, e.fid_image_size, e.fid_weights
    )
    self.batch_size = e.batch_size
    path = stats_path(
        data, self.features, e.fid_split, self.num, config.data.image_size
    )
    cached = paths.exists(path)
    moments, sample, captions = fid.Moments(), fid.Sample(KID_ROWS), []
    for images, caps in _records(data, e.fid_split, self.num, self.batch_size):
      captions += caps
      if not cached:
        f = self.features(images, self.batch_size)
        moments.add(f)
        sample.add(f)
    if cached:
      with np.load(io.BytesIO(paths.read_bytes(path))) as z:
        self.ref = {k: z[k] for k in z.files}
    else:
      self.ref = {**moments.to_arrays(), "kid_rows": sample.array()}
      if jax.process_index() == 0:
        paths.makedirs(paths.dirname(path))
        paths.write_with(path, np.savez, **self.ref)  # Whole or not there.
      logging.info(
          "FD/KID reference: %d %s images of split %r (%s), cached in %s",
          self.num,
          config.data.name,
          e.fid_split,
          self.features.name,
          path,
      )
    self.captions = captions
    self.ids, self.mask = tokenizer_lib.tokenize(
        tokenizer, captions, config.data.max_len
    )

  def __call__(self, images_for, clip=None) -> dict[str, float]:
    """FD/KID of images drawn for the split's captions, batch by batch; with
    `clip` (a ClipScorer) the CLIP score of the same images too."""
    moments, sample = fid.Moments(), fid.Sample(KID_ROWS)
    n, bs = len(self.ids), self.batch_size
    clip_scores = []
    for i in range(0, n, bs):
      images = images_for(self.ids[i : i + bs], self.mask[i : i + bs])
      if clip is not None:
        clip_scores.append(clip.scores(images, self.captions[i : i + bs]))
      f = self.features(np.clip(images, 0.0, 1.0), bs)
      moments.add(f)
      sample.add(f)
    net = self.features.net
    fd = fid.frechet_distance(
        self.ref["mean"], self.ref["cov"], moments.mean, moments.cov
    )
    # Subsets of half the smaller set: the std then says how much the
    # estimate moves with the images drawn (subsets of all rows never move).
    fake, real = sample.array(), self.ref["kid_rows"]
    kid_mean, kid_std = fid.kid(
        real,
        fake,
        num_subsets=50,
        subset_size=min(1000, max(2, min(len(real), len(fake)) // 2)),
    )
    out = {
        f"val/fd_{net}": fd,
        f"val/kid_{net}": kid_mean,
        f"val/kid_{net}_std": kid_std,
        "val/fid_num": float(n),
    }
    if clip_scores:
      out["val/clip_score"] = float(np.concatenate(clip_scores).mean())
      out["val/clip_num"] = float(n)
    return out
