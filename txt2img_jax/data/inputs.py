"""What one input (an image and its captions) is, and how it is checked and
turned into what is stored: the reasons an input is skipped, `BadInput`,
`Issue` (one counted problem), `Candidate` (one listed input), the caption
rules (normalise, choose one per epoch, too long) and the image rules (open,
convert to RGB, resize and centre-crop to uint8 (S, S, 3)). Every source
(`imagefolder`, `tfds_source`, `webdataset`) and `records_prepare` use them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Why an input was skipped (or, for the KEPT_REASONS, kept but worth knowing).
BAD_METADATA_LINE = "bad_metadata_line"


DUPLICATE_ROW = "duplicate_row"


MISSING_FILE = "missing_file"


OUTSIDE_FOLDER = "outside_folder"  # A symlink whose target is elsewhere.


EMPTY_CAPTION = "empty_caption"


NOT_AN_IMAGE = "not_an_image"


CORRUPT_IMAGE = "corrupt_image"


TOO_SMALL = "too_small"


TOO_MANY_PIXELS = "too_many_pixels"


LONG_CAPTION = "long_caption"


CAPTION_CUT = "caption_cut"  # Over data.max_caption_chars: cut, then kept.


UNLISTED_IMAGE = "unlisted_image"


BAD_SHARD = "bad_shard"  # A tar shard that is not one, or is cut short.
# What happened to the input for each reason.


KEPT_REASONS = frozenset({LONG_CAPTION, CAPTION_CUT})


UNUSED_REASONS = frozenset({UNLISTED_IMAGE})


IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".gif",
        ".bmp",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
    }
)


DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class BadInput(Exception):
  """One input that cannot be used; `reason` is one of the names above."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Issue:
  """A counted problem: `path` relative to the source, `line` in metadata."""

  reason: str
  path: str
  line: int | None = None
  detail: str = ""  # What the decoder said, for decode problems.


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A row that survived listing; whether its image decodes is found later.

  `key` names the example stably (its hash picks the split); `index` is the
  row's position among the metadata rows (blank lines not counted), stored
  with the record so a record can be traced back to its row.
  """

  key: str
  index: int
  line: int | None = None
  split: str | None = None  # None: the key's hash decides.
  captions: tuple[str, ...] | None = None


# ----------------------------------------------------------------- captions


def normalize_captions(value: Any) -> list[str]:
  """A caption cell (str, bytes, list of them, None) -> non-empty stripped."""
  if value is None:
    return []
  if isinstance(value, (bytes, np.bytes_)):
    value = value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    value = [value]
  elif isinstance(value, np.ndarray):
    value = value.reshape(-1).tolist()
  elif not isinstance(value, (list, tuple)):
    value = [str(value)]
  out = []
  for v in value:
    if isinstance(v, (bytes, np.bytes_)):
      v = v.decode("utf-8", errors="replace")
    if v is None:
      continue
    v = str(v).strip()
    if v:
      out.append(v)
  return out


def is_long_caption(
    caption: str, max_chars: int | None, max_words: int | None
) -> bool:
  return (max_chars is not None and len(caption) > max_chars) or (
      max_words is not None and len(caption.split()) > max_words
  )


def _mix64(x: int) -> int:
  # SplitMix64's finaliser: cheap, well spread, the same on every platform.
  x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
  return x ^ (x >> 31)


def choose_caption(
    captions: Sequence[str], seed: int, step: int, index: int
) -> str:
  """One of an example's captions, a pure function of (seed, step, index).

  A different caption can come up each time the example is seen, and a run
  resumed at `step` picks exactly what the uninterrupted run picked.
  """
  if not captions:
    raise ValueError(f"Example {index} has no caption to choose from.")
  if len(captions) == 1:
    return captions[0]
  h = _mix64(
      _mix64(_mix64(seed & 0xFFFFFFFFFFFFFFFF) ^ (step & (2**64 - 1)))
      ^ (index & (2**64 - 1))
  )
  return captions[h % len(captions)]


def split_of(key: str, val_fraction: float) -> str:
  """'val' for a stable `val_fraction` of keys (by hash), else 'train'."""
  return "val" if key_unit(key) < val_fraction else "train"


def key_unit(key: str) -> float:
  """A number in [0, 1) fixed by `key` alone (not by Python's hash seed)."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


# ------------------------------------------------------------------- images


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
  """Any PIL mode -> uint8 (H, W, 3); alpha is composited on `background`."""
  mode = im.mode
  if mode.startswith("I;16") or mode == "I":
    # 16-bit samples (PIL opens 16-bit greyscale PNGs as I;16 or I).
    a = np.asarray(im, dtype=np.float64)
    a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  if mode == "F":
    a = np.clip(np.round(np.asarray(im, np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  has_alpha = (
      mode in ("RGBA", "LA", "PA", "La", "RGBa")
      or (mode == "P" and "transparency" in im.info)
      or (mode in ("L", "RGB") and "transparency" in im.info)
  )
  if not has_alpha:
    return np.asarray(im.convert("RGB"))
  rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
  alpha = rgba[..., 3:]
  bg = np.asarray(background, np.uint32)
  # Integer compositing: exact, so tests can check pixel values.
  out = (rgba[..., :3] * alpha + bg * (255 - alpha) + 127) // 255
  return out.astype(np.uint8)


def resize_center_crop(rgb: np.ndarray, image_size: int) -> np.ndarray:
  """Shorter side to `image_size` (antialiased), then a centre square."""
  h, w = rgb.shape[:2]
  if (h, w) == (image_size, image_size):
    return rgb  # Bit-exact for data already at the target size.
  side = min(h, w)
  left, top = (w - side) / 2, (h - side) / 2
  # One resample of the centre square equals resize-then-crop, without
  # rounding the crop offset to a whole pixel of the resized image.
  out = Image.fromarray(rgb).resize(
      (image_size, image_size),
      Image.Resampling.BICUBIC,
      box=(left, top, left + side, top + side),
  )
  return np.asarray(out)


def check_size(size: tuple[int, int], min_side: int, max_pixels: int) -> None:
  w, h = size
  if w * h > max_pixels:
    raise BadInput(
        TOO_MANY_PIXELS, f"{w}x{h} is over the pixel limit {max_pixels}"
    )
  if min(w, h) < min_side:
    raise BadInput(TOO_SMALL, f"{w}x{h} is below the minimum side {min_side}")


def prepare_image(
    im: Image.Image,
    image_size: int,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
  """An opened (not yet loaded) image -> uint8 (image_size, image_size, 3).

  Sizes are checked from the header before any pixel is decoded, so a
  decompression bomb costs nothing. Raises BadInput.
  """
  check_size(im.size, min_side, max_pixels)
  try:
    if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
      # Decode a large JPEG at a reduced DCT scale that still covers
      # image_size on the shorter side (EXIF rotation keeps that true).
      scale = min(im.size) / image_size
      if scale >= 2:
        im.draft(
            im.mode, (int(im.size[0] / scale) + 1, int(im.size[1] / scale) + 1)
        )
    im.load()
    im = ImageOps.exif_transpose(im)
    rgb = _to_rgb(im, background)
  except Exception as e:  # pylint: disable=broad-except
    # PIL's plugins raise many types for broken files; none may stop a run.
    raise BadInput(
        CORRUPT_IMAGE, f"cannot decode: {type(e).__name__}: {e}"
    ) from e
  return resize_center_crop(rgb, image_size)


def open_image(data: str | bytes) -> Image.Image:
  """Opens a path or bytes lazily; raises BadInput with the right reason."""
  try:
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
  except FileNotFoundError as e:
    raise BadInput(MISSING_FILE, "file vanished after listing") from e
  except Image.DecompressionBombError as e:
    raise BadInput(TOO_MANY_PIXELS, str(e)) from e
  except UnidentifiedImageError as e:
    raise BadInput(NOT_AN_IMAGE, "not an image PIL can read") from e
  except Exception as e:  # pylint: disable=broad-except
    raise BadInput(
        CORRUPT_IMAGE, f"cannot open: {type(e).__name__}: {e}"
    ) from e
