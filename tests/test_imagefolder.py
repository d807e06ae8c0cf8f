"""The image-folder source: listing, image decoding, captions, fatal errors,
and the shapes world written out as a folder and read back bit-exactly."""

import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from txt2img_jax.data import inputs
from txt2img_jax.data import imagefolder as ifo
from txt2img_jax.data import records
from txt2img_jax.data import records_prepare
from txt2img_jax.data import shapes


def png_bytes(width, height, bit_depth, color_type, raw_rows):
  """A PNG written by hand (PIL cannot write 16-bit RGB or lie in IHDR)."""

  def chunk(kind, data):
    body = kind + data
    return (
        struct.pack(">I", len(data))
        + body
        + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    )

  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
  idat = zlib.compress(b"".join(b"\0" + r for r in raw_rows))
  return (
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", ihdr)
      + chunk(b"IDAT", idat)
      + chunk(b"IEND", b"")
  )


def prep(im, size=16, **kw):
  b = io.BytesIO()
  im.save(b, format="PNG", **({"exif": kw.pop("exif")} if "exif" in kw else {}))
  return inputs.prepare_image(inputs.open_image(b.getvalue()), size, **kw)


def test_exif_rotation_is_applied():
  a = np.zeros((20, 40, 3), np.uint8)  # Stored 40 wide, 20 tall.
  a[:, :20] = (230, 30, 30)
  a[:, 20:] = (40, 70, 235)
  exif = Image.Exif()
  exif[0x0112] = 6  # Shown rotated 90 degrees clockwise: left -> top.
  out = prep(Image.fromarray(a), exif=exif.tobytes())
  assert out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out[2, 2], (230, 30, 30))
  np.testing.assert_array_equal(out[13, 2], (40, 70, 235))
  np.testing.assert_array_equal(out[13, 13], (40, 70, 235))


def test_rgba_composited_on_background():
  a = np.zeros((16, 16, 4), np.uint8)
  a[...] = (200, 100, 0, 128)
  a[:, 8:, 3] = 0
  out = prep(Image.fromarray(a, "RGBA"), background=(255, 255, 255))
  # (200 * 128 + 255 * 127) / 255 = 227.4; (100 * 128 + 255 * 127) / 255 = 177.2
  np.testing.assert_array_equal(out[0, 0], (227, 177, 127))
  np.testing.assert_array_equal(out[0, 15], (255, 255, 255))
  out = prep(Image.fromarray(a, "RGBA"), background=(0, 0, 0))
  np.testing.assert_array_equal(out[0, 0], (100, 50, 0))
  np.testing.assert_array_equal(out[0, 15], (0, 0, 0))


def test_palette_greyscale_16bit_cmyk_to_rgb():
  pal = Image.new("P", (16, 16))
  pal.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
  pal.putpixel((3, 4), 1)
  out = prep(pal)
  np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
  np.testing.assert_array_equal(out[4, 3], (200, 150, 100))

  pal.info["transparency"] = 0  # Index 0 transparent: the background shows.
  out = prep(pal, background=(1, 2, 3))
  np.testing.assert_array_equal(out[0, 0], (1, 2, 3))

  out = prep(Image.fromarray(np.full((16, 16), 77, np.uint8), "L"))
  np.testing.assert_array_equal(out[5, 5], (77, 77, 77))

  grey16 = Image.fromarray(np.full((16, 16), 0x8080, np.uint16))
  assert grey16.mode.startswith("I;16")
  np.testing.assert_array_equal(prep(grey16)[5, 5], (128, 128, 128))

  # 16-bit RGB: (0xC8FF, 0x6400, 0x0000) -> (200, 100, 0).
  row = struct.pack(">HHH", 0xC8FF, 0x6400, 0) * 16
  data = png_bytes(16, 16, 16, 2, [row] * 16)
  out = inputs.prepare_image(inputs.open_image(data), 16)
  np.testing.assert_allclose(out[5, 5], (200, 100, 0), atol=1)

  cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # Pure red.
  b = io.BytesIO()
  cmyk.save(b, format="TIFF")
  out = inputs.prepare_image(inputs.open_image(b.getvalue()), 16)
  np.testing.assert_array_equal(out[5, 5], (255, 0, 0))


def test_resize_shorter_side_then_centre_crop():
  a = np.zeros((64, 96, 3), np.uint8)
  # The left 8 columns are cropped away at 32 px (the crop starts at source
  # column 16; the resampling filter reaches 4 columns past it).
  a[:, :8] = 255
  out = prep(Image.fromarray(a), size=32)
  assert out.shape == (32, 32, 3)
  assert out.max() == 0
  a = np.full((33, 33, 3), 50, np.uint8)
  np.testing.assert_array_equal(prep(Image.fromarray(a), size=32), 50)


def test_bad_images_raise_their_reason():
  with pytest.raises(inputs.BadInput) as e:
    inputs.open_image(b"this is a caption file, not a picture")
  assert e.value.reason == inputs.NOT_AN_IMAGE
  good = io.BytesIO()
  Image.fromarray(
      np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  ).save(good, format="PNG")
  with pytest.raises(inputs.BadInput) as e:
    inputs.prepare_image(inputs.open_image(good.getvalue()[:600]), 16)
  assert e.value.reason == inputs.CORRUPT_IMAGE
  tiny = Image.new("RGB", (4, 4))
  with pytest.raises(inputs.BadInput) as e:
    inputs.prepare_image(tiny, 16, min_side=8)
  assert e.value.reason == inputs.TOO_SMALL
  # A header claiming 60000 x 60000 pixels: refused before any decoding.
  bomb = png_bytes(60000, 60000, 8, 2, [])
  with pytest.raises(inputs.BadInput) as e:
    inputs.prepare_image(inputs.open_image(bomb), 16)
  assert e.value.reason == inputs.TOO_MANY_PIXELS
  with pytest.raises(inputs.BadInput) as e:
    inputs.prepare_image(Image.new("RGB", (100, 100)), 16, max_pixels=9999)
  assert e.value.reason == inputs.TOO_MANY_PIXELS


def test_choose_caption_is_deterministic_and_uses_all():
  caps = ["a", "b", "c", "d", "e"]
  picks = [inputs.choose_caption(caps, 0, step, 7) for step in range(200)]
  assert picks == [
      inputs.choose_caption(caps, 0, step, 7) for step in range(200)
  ]
  assert set(picks) == set(caps)
  assert picks != [
      inputs.choose_caption(caps, 1, step, 7) for step in range(200)
  ]
  assert inputs.choose_caption(["only"], 3, 4, 5) == "only"
  with pytest.raises(ValueError):
    inputs.choose_caption([], 0, 0, 0)


def test_normalize_captions():
  assert inputs.normalize_captions(" a cat ") == ["a cat"]
  assert inputs.normalize_captions(["x", "", "  ", "y"]) == ["x", "y"]
  assert inputs.normalize_captions(np.array([b"p", b"q"], object)) == ["p", "q"]
  assert inputs.normalize_captions(None) == []
  assert inputs.normalize_captions("") == []


def _save(root, rel, image):
  os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
  Image.fromarray(image).save(os.path.join(root, rel))


def test_csv_listing_lists_of_captions_and_problems(tmp_path):
  root = str(tmp_path)
  for n in ("a.png", "sub/b.png", "c.png", "unlisted.png"):
    _save(root, n, np.zeros((8, 8, 3), np.uint8))
  with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
    f.write(
        "file_name,caption\n"
        'a.png,"a plain one"\n'
        'sub/b.png,"[""first"", ""second""]"\n'
        "gone.png,lost\n"
        "a.png,again\n"
        "c.png,too,many,fields\n"
    )
  src = ifo.ImageFolderSource(root, caption_column="caption")
  assert [(c.key, c.captions, c.index) for c in src.candidates] == [
      ("a.png", ("a plain one",), 0),
      ("sub/b.png", ("first", "second"), 1),
  ]
  got = sorted((i.reason, i.path, i.line) for i in src.issues)
  assert got == [
      (inputs.BAD_METADATA_LINE, "metadata.csv", 6),
      (inputs.DUPLICATE_ROW, "a.png", 5),
      (inputs.MISSING_FILE, "gone.png", 4),
      (inputs.UNLISTED_IMAGE, "c.png", None),
      (inputs.UNLISTED_IMAGE, "unlisted.png", None),
  ]


def test_fatal_listing_errors_are_one_clear_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist") as e:
    ifo.ImageFolderSource(str(tmp_path / "nope"))
  assert "\n" not in str(e.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="No metadata.jsonl or metadata"):
    ifo.ImageFolderSource(str(empty))
  (empty / "metadata.jsonl").write_text('{"file_name": "a.png", "txt": "x"}\n')
  with pytest.raises(ValueError, match=r"needs 'file_name' and 'text'") as e:
    ifo.ImageFolderSource(str(empty))
  assert "\n" not in str(e.value)
  (empty / "metadata.csv").write_text("file_name,text\n")
  with pytest.raises(ValueError, match="Both metadata.jsonl and metadata.csv"):
    ifo.ImageFolderSource(str(empty))
  os.remove(empty / "metadata.jsonl")
  (empty / "metadata.csv").write_text("path,text\n")
  with pytest.raises(ValueError, match=r"has columns \['path', 'text'\]"):
    ifo.ImageFolderSource(str(empty))
  # Header only: nothing to prepare, and nothing written.
  (empty / "metadata.csv").write_text("file_name,text\n")
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="No usable examples"):
    records_prepare.prepare(
        ifo.ImageFolderSource(str(empty)),
        str(out),
        image_size=8,
        progress=False,
    )
  assert not out.exists()


def test_shapes_written_as_folder_read_back_bit_identical(tmp_path):
  root, out = str(tmp_path / "shapes"), str(tmp_path / "prepared")
  os.makedirs(root)
  n, size = 24, 32
  with open(os.path.join(root, "metadata.jsonl"), "w") as f:
    for i in range(n):
      ex = shapes.example(0, "train", i, size)
      name = f"img/{i:04d}.png"
      _save(root, name, ex["image"])
      f.write(json.dumps({"file_name": name, "text": ex["caption"]}) + "\n")
  report = records_prepare.prepare(
      ifo.ImageFolderSource(root),
      out,
      image_size=size,
      val_count=4,
      chunk_size=10,
      progress=False,
  )
  assert report["written"] == {"train": 20, "val": 4}
  assert report["reasons"] == {}
  seen = []
  for split in ("train", "val"):
    src = records.PreparedSource(out, split)
    for j in range(len(src)):
      rec = records.decode_record(src[j])
      i = rec["index"]
      ex = shapes.example(0, "train", i, size)
      np.testing.assert_array_equal(
          records.decode_image_uint8(src[j]), ex["image"]
      )
      np.testing.assert_array_equal(
          rec["image"], ex["image"].astype(np.float32) / 255.0
      )
      assert rec["captions"] == [ex["caption"]]
      seen.append(i)
  assert sorted(seen) == list(range(n))


def _jsonl(root, rows):
  with open(os.path.join(root, "metadata.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_links_that_leave_the_folder_are_counted_not_followed(tmp_path):
  root, elsewhere = tmp_path / "set", tmp_path / "elsewhere"
  os.makedirs(elsewhere)
  _save(str(root), "a.png", np.zeros((8, 8, 3), np.uint8))
  _save(str(elsewhere), "out.png", np.zeros((8, 8, 3), np.uint8))
  _save(str(elsewhere), "deep/x.png", np.zeros((8, 8, 3), np.uint8))
  os.symlink(elsewhere / "out.png", root / "out.png")
  os.symlink("/etc/hostname", root / "host.png")
  os.symlink(elsewhere / "deep", root / "deep")  # A linked folder.
  os.symlink(root / "a.png", root / "same.png")  # Stays inside: fine.
  names = ["a.png", "out.png", "host.png", "deep/x.png", "same.png"]
  _jsonl(str(root), [{"file_name": n, "text": "x"} for n in names])

  src = ifo.ImageFolderSource(str(root))
  assert [c.key for c in src.candidates] == ["a.png", "same.png"]
  outside = sorted(i.path for i in src.issues if i.reason == "outside_folder")
  assert outside == ["deep/x.png", "host.png", "out.png"]
  detail = {i.path: i.detail for i in src.issues}
  assert "/etc/hostname" in detail["host.png"]
  assert "follow_symlinks" in detail["out.png"]

  src = ifo.ImageFolderSource(str(root), follow_symlinks=True)
  assert [c.key for c in src.candidates] == names
