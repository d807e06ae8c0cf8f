"""Preparing a source into ArrayRecord shards: the report of bad inputs,
resumption, the fingerprint of the cache, grain reading, and TFDS sources."""

import inspect
import io
import json
import os
import shutil

from etils import epath
import grain
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from txt2img_jax.data import inputs
from txt2img_jax.data import imagefolder as ifo
from txt2img_jax.data import records
from txt2img_jax.data import records_prepare
from txt2img_jax.data import records_report
from txt2img_jax.data import tfds_source

from test_imagefolder import png_bytes  # pylint: disable=g-bad-import-order

SIZE = 16
OPTS = dict(
    image_size=SIZE,
    min_side=8,
    max_pixels=20_000,
    max_caption_words=20,
    val_count=2,
    progress=False,
    num_workers=2,
)
LONG = " ".join(["word"] * 30)


def _put(root, rel, data):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if isinstance(data, bytes):
    with open(path, "wb") as f:
      f.write(data)
  else:
    data.save(path)


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
  """8 good images (each mode once) and one of every bad input."""
  root = str(tmp_path_factory.mktemp("bad_folder"))
  rows = []

  def row(name, text=..., image=None):
    if image is not None:
      _put(root, name, image)
    r = {"file_name": name}
    if text is not ...:
      r["text"] = text
    rows.append(json.dumps(r))

  row("good/red.png", "a red square", Image.new("RGB", (20, 20), (230, 30, 30)))
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[...] = (200, 100, 0, 128)
  row("good/rgba.png", "half see-through orange", Image.fromarray(rgba))
  pal = Image.new("P", (16, 16), 1)
  pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  row("good/palette.png", "a palette image", pal)
  row("good/grey.png", "grey", Image.new("L", (16, 16), 77))
  row(
      "good/grey16.png",
      "16-bit grey",
      Image.fromarray(np.full((16, 16), 0x8080, np.uint16)),
  )
  ex = np.zeros((20, 40, 3), np.uint8)
  ex[:, :20], ex[:, 20:] = (230, 30, 30), (40, 70, 235)
  exif = Image.Exif()
  exif[0x0112] = 6
  _put(root, "good/exif.png", b"")
  Image.fromarray(ex).save(
      os.path.join(root, "good/exif.png"), exif=exif.tobytes()
  )
  row("good/exif.png", "red above blue")
  row(
      "good/multi.png",
      ["one", "two", "three"],
      Image.new("RGB", (16, 16), (1, 2, 3)),
  )
  row("good/long.png", LONG, Image.new("RGB", (16, 16), (9, 9, 9)))

  noisy = Image.fromarray(
      np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  )
  noisy.save(os.path.join(root, "noisy.png"))
  with open(os.path.join(root, "noisy.png"), "rb") as f:
    truncated = f.read()[:700]
  os.remove(os.path.join(root, "noisy.png"))
  row("bad/truncated.png", "truncated", truncated)
  row("bad/notimage.jpg", "text renamed", b"just some caption text\n")
  row("bad/missing.png", "not on disk")
  row("good/red.png", "listed twice")
  row("bad/empty_caption.png", "   ", Image.new("RGB", (16, 16)))
  row("bad/no_caption.png", image=Image.new("RGB", (16, 16)))
  rows.append('{"file_name": "bad/broken.png", "text": "unterminated')
  rows.append('["not", "an", "object"]')
  row("bad/tiny.png", "four by four", Image.new("RGB", (4, 4)))
  row("bad/bomb.png", "huge header", png_bytes(60000, 60000, 8, 2, []))
  row("bad/big.png", "over max_pixels", Image.new("RGB", (200, 150)))
  _put(root, "unlisted/extra.png", Image.new("RGB", (16, 16)))
  with open(os.path.join(root, "metadata.jsonl"), "w") as f:
    f.write("\n".join(rows[:3] + [""] + rows[3:]) + "\n")  # A blank line too.
  return root


EXPECTED = {
    inputs.CORRUPT_IMAGE: 1,
    inputs.NOT_AN_IMAGE: 1,
    inputs.MISSING_FILE: 1,
    inputs.DUPLICATE_ROW: 1,
    inputs.EMPTY_CAPTION: 2,
    inputs.BAD_METADATA_LINE: 2,
    inputs.TOO_SMALL: 1,
    inputs.TOO_MANY_PIXELS: 2,
    inputs.LONG_CAPTION: 1,
    inputs.UNLISTED_IMAGE: 1,
}


def _by_key(out):
  got = {}
  for split in ("train", "val"):
    src = records.PreparedSource(out, split)
    for i in range(len(src)):
      rec = records.read_record(src[i])
      assert rec["key"] not in got, "a record was written twice"
      got[rec["key"]] = (split, src[i])
  return got


def test_bad_inputs_are_counted_and_good_ones_kept(bad_folder, tmp_path):
  out = str(tmp_path / "out")
  report = records_prepare.prepare(
      ifo.ImageFolderSource(bad_folder), out, **OPTS
  )
  counts = {r: v["count"] for r, v in report["reasons"].items()}
  assert counts == EXPECTED
  assert report["written"] == {"train": 6, "val": 2}
  assert report["skipped"] == 11
  first = report["reasons"]
  assert first[inputs.MISSING_FILE]["first"] == [
      {"path": "bad/missing.png", "line": 12}
  ]
  assert first[inputs.BAD_METADATA_LINE]["first"] == [
      {"path": "metadata.jsonl", "line": 16},
      {"path": "metadata.jsonl", "line": 17},
  ]
  assert first[inputs.DUPLICATE_ROW]["first"][0]["path"] == "good/red.png"
  corrupt = first[inputs.CORRUPT_IMAGE]["first"][0]
  assert corrupt["path"] == "bad/truncated.png"
  assert corrupt["detail"].startswith("cannot decode"), corrupt
  assert first[inputs.TOO_SMALL]["first"][0]["detail"] == (
      "4x4 is below the minimum side 8"
  )
  assert first[inputs.LONG_CAPTION]["action"] == "kept"
  assert report["bytes_per_example"] > SIZE * SIZE * 3
  with open(os.path.join(out, records.REPORT)) as f:
    assert json.load(f)["reasons"] == first

  recs = {k: records.decode_record(raw) for k, (_, raw) in _by_key(out).items()}
  assert sorted(recs) == sorted(
      [
          "good/red.png",
          "good/rgba.png",
          "good/palette.png",
          "good/grey.png",
          "good/grey16.png",
          "good/exif.png",
          "good/multi.png",
          "good/long.png",
      ]
  )
  u8 = {k: np.round(r["image"] * 255).astype(np.uint8) for k, r in recs.items()}
  np.testing.assert_array_equal(u8["good/rgba.png"][3, 3], (227, 177, 127))
  np.testing.assert_array_equal(u8["good/palette.png"][3, 3], (10, 20, 30))
  np.testing.assert_array_equal(u8["good/grey16.png"][3, 3], (128, 128, 128))
  np.testing.assert_array_equal(u8["good/exif.png"][2, 2], (230, 30, 30))
  np.testing.assert_array_equal(u8["good/exif.png"][13, 2], (40, 70, 235))
  assert recs["good/multi.png"]["captions"] == ["one", "two", "three"]
  assert recs["good/long.png"]["captions"] == [LONG]
  assert recs["good/red.png"]["captions"] == ["a red square"]
  assert recs["good/red.png"]["index"] == 0
  assert recs["good/grey.png"]["index"] == 3  # The blank line isn't a row.


def _featurize(fail_on_call=None):
  calls = []

  def featurize(images, captions):
    calls.append(len(images))
    if fail_on_call is not None and len(calls) == fail_on_call:
      raise RuntimeError("interrupted")
    return {
        "mean_rgb": images.reshape(len(images), -1, 3)
        .mean(1)
        .astype(np.float32),
        "num_captions": np.array([len(c) for c in captions], np.int32),
    }

  return featurize


def test_resume_gives_the_records_of_a_clean_run(bad_folder, tmp_path):
  fp = {"encoder": "mean-rgb", "weights_sha256": "0" * 8, "max_len": 4}
  opts = dict(OPTS, chunk_size=3, featurize_batch_size=2, fingerprint=fp)
  clean, resumed = str(tmp_path / "clean"), str(tmp_path / "resumed")
  clean_report = records_prepare.prepare(
      ifo.ImageFolderSource(bad_folder), clean, featurize=_featurize(), **opts
  )
  with pytest.raises(RuntimeError, match="interrupted"):
    records_prepare.prepare(
        ifo.ImageFolderSource(bad_folder),
        resumed,
        featurize=_featurize(fail_on_call=5),
        **opts,
    )
  with pytest.raises(FileNotFoundError, match="unfinished"):
    records.PreparedSource(resumed, "train")
  done = sorted(os.listdir(os.path.join(resumed, records.CHUNKS_DIR)))
  assert len(done) >= 2, "chunks should have finished before the failure"
  # As if killed between a shard's rename and its chunk record.
  os.remove(os.path.join(resumed, records.CHUNKS_DIR, done[-1]))
  # And a half-written shard of a killed run.
  stale = os.path.join(resumed, "train-00002-of-00003.array_record.tmp")
  with open(stale, "wb") as f:
    f.write(b"half a shard")
  report = records_prepare.prepare(
      ifo.ImageFolderSource(bad_folder), resumed, featurize=_featurize(), **opts
  )
  assert report["reasons"] == clean_report["reasons"]
  assert report["written"] == clean_report["written"]
  assert report["processed"] < report["listed"]
  assert not os.path.exists(stale)
  a, b = _by_key(clean), _by_key(resumed)
  assert a == b
  assert sorted(
      f for f in os.listdir(clean) if f.endswith("array_record")
  ) == sorted(f for f in os.listdir(resumed) if f.endswith("array_record"))

  # The featurize arrays, through grain as training will read them.
  src = records.PreparedSource(resumed, "train")
  assert src.extras == {
      "mean_rgb": {"dtype": "<f4", "shape": [3]},
      "num_captions": {"dtype": "<i4", "shape": []},
  }
  ds = grain.MapDataset.source(src).map(records.DecodeRecord())
  for i in range(len(src)):
    ex = ds[i]
    np.testing.assert_allclose(
        ex["mean_rgb"], (ex["image"] * 255).reshape(-1, 3).mean(0), atol=1e-3
    )
    assert ex["num_captions"] == len(ex["captions"])


def test_fingerprint_mismatch_is_an_error_or_a_rebuild(bad_folder, tmp_path):
  out = str(tmp_path / "out")
  fp = {"encoder": "mean-rgb", "weights_sha256": "abc", "max_len": 4}
  src = ifo.ImageFolderSource(bad_folder)
  records_prepare.prepare(
      src, out, featurize=_featurize(), fingerprint=fp, **OPTS
  )
  manifest = os.path.join(out, records.MANIFEST)
  mtime = os.stat(manifest).st_mtime_ns
  # Same settings: reused, nothing rewritten.
  records_prepare.prepare(
      src, out, featurize=_featurize(), fingerprint=fp, **OPTS
  )
  assert os.stat(manifest).st_mtime_ns == mtime
  other = dict(fp, weights_sha256="def")
  with pytest.raises(ValueError, match=r"differs in: featurize.weights_sha256"):
    records_prepare.prepare(
        src, out, featurize=_featurize(), fingerprint=other, **OPTS
    )
  with pytest.raises(ValueError, match=r"prepare.image_size"):
    records_prepare.prepare(
        src,
        out,
        featurize=_featurize(),
        fingerprint=fp,
        **dict(OPTS, image_size=8),
    )
  with pytest.raises(ValueError, match="needs a `fingerprint`"):
    records_prepare.prepare(src, out, featurize=_featurize(), **OPTS)
  records_prepare.prepare(
      src, out, featurize=_featurize(), fingerprint=other, rebuild=True, **OPTS
  )
  assert records.PreparedSource(out).fingerprint["featurize"] == other

  # A changed image in the source changes the fingerprint too.
  changed = str(tmp_path / "changed")
  shutil.copytree(bad_folder, changed)
  records_prepare.prepare(
      ifo.ImageFolderSource(changed), str(tmp_path / "o2"), **OPTS
  )
  Image.new("RGB", (20, 20), (0, 0, 0)).save(
      os.path.join(changed, "good/red.png")
  )
  os.utime(os.path.join(changed, "good/red.png"), ns=(1, 1))
  with pytest.raises(ValueError, match=r"source.files_digest"):
    records_prepare.prepare(
        ifo.ImageFolderSource(changed), str(tmp_path / "o2"), **OPTS
    )


def test_fatal_output_errors(bad_folder, tmp_path):
  src = ifo.ImageFolderSource(bad_folder)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="is not writable") as e:
    records_prepare.prepare(src, str(blocker / "out"), **OPTS)
  assert "\n" not in str(e.value)

  # Every listed input bad: an error, and nothing that looks complete.
  root = tmp_path / "all_bad"
  root.mkdir()
  (root / "x.jpg").write_bytes(b"not an image")
  (root / "metadata.jsonl").write_text('{"file_name": "x.jpg", "text": "x"}\n')
  out = str(tmp_path / "out")
  with pytest.raises(ValueError, match=r"No usable examples.*not_an_image"):
    records_prepare.prepare(ifo.ImageFolderSource(str(root)), out, **OPTS)
  assert not os.path.exists(os.path.join(out, records.MANIFEST))
  with pytest.raises(FileNotFoundError, match="unfinished"):
    records.PreparedSource(out, "train")


# ----------------------------------------------------------------- TFDS


class TinyFolderTestCaptions(tfds.core.GeneratorBasedBuilder):
  """Solid-colour images of varied sizes with a nested caption feature."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Test data."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "meta": {"caption": tfds.features.Text()},
            }
        ),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        "train": self._generate_examples(10, 0),
        "validation": self._generate_examples(3, 50),
    }

  def _generate_examples(self, n, offset):
    for i in range(n):
      k = i + offset
      image = np.full((16 + i, 20, 3), (k, 2 * k, 3 * k), np.uint8)
      caption = "" if (offset == 0 and i == 4) else f"colour {k}"
      yield i, {"image": image, "meta": {"caption": caption}}


def test_tfds_source(tmp_path):
  data_dir = str(tmp_path / "tfds")
  tfds.disable_progress_bar()
  TinyFolderTestCaptions(
      data_dir=data_dir, file_format="array_record"
  ).download_and_prepare(file_format="array_record")
  name = TinyFolderTestCaptions.name
  src = tfds_source.TfdsSource(
      name,
      data_dir=data_dir,
      image_key="image",
      caption_key="meta/caption",
      val_split="validation",
  )
  out = str(tmp_path / "out")
  report = records_prepare.prepare(src, out, **OPTS)
  assert report["written"] == {"train": 9, "val": 3}
  assert {r: v["count"] for r, v in report["reasons"].items()} == {
      inputs.EMPTY_CAPTION: 1
  }
  assert report["reasons"][inputs.EMPTY_CAPTION]["first"] == [
      {"path": "train/4"}
  ]
  for split, offset in (("train", 0), ("val", 50)):
    ps = records.PreparedSource(out, split)
    for i in range(len(ps)):
      rec = records.decode_record(ps[i])
      k = rec["index"] + offset
      assert rec["captions"] == [f"colour {k}"]
      np.testing.assert_array_equal(
          records.decode_image_uint8(ps[i]),
          np.full((SIZE, SIZE, 3), (k, 2 * k, 3 * k)),
      )
  with pytest.raises(ValueError, match="no feature 'caption'"):
    tfds_source.TfdsSource(name, data_dir=data_dir, caption_key="caption")
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tfds_source.TfdsSource(name, data_dir=str(tmp_path / "empty"))


def test_progress_line_and_summary():
  stream = io.StringIO()
  bar = records_report.Progress(total=10, done=4, enabled=True, stream=stream)
  bar.update(3)
  bar.close()
  line = stream.getvalue().strip().splitlines()[-1]
  assert line.startswith("prepare: 7/10 (70%) ") and "images/s, ETA" in line
  lines = records_report.summary_lines(
      {
          "written": {"train": 5, "val": 1},
          "listed": 9,
          "seconds": 2.0,
          "bytes_per_example": 100.0,
          "output": "/o",
          "reasons": {"too_small": {"count": 3, "action": "skipped"}},
      }
  )
  assert lines[1] == "prepare: too_small 3 (skipped)"


def test_a_huge_caption_is_cut_and_counted(tmp_path):
  root = str(tmp_path / "set")
  os.makedirs(root)
  rows = []
  for i, text in enumerate(["short", "x" * 1_000_000, "fine " * 10]):
    _put(root, f"{i}.png", Image.new("RGB", (16, 16), (i, i, i)))
    rows.append({"file_name": f"{i}.png", "text": text})
  with open(os.path.join(root, "metadata.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  out = str(tmp_path / "out")
  report = records_prepare.prepare(
      ifo.ImageFolderSource(root),
      out,
      **dict(OPTS, val_count=0),
      max_caption_chars=2000,
  )
  cut = report["reasons"][inputs.CAPTION_CUT]
  assert cut["count"] == 1 and cut["action"] == "kept"
  assert "1000000 characters, cut to 2000" in cut["first"][0]["detail"]
  assert report["written"] == {"train": 3, "val": 0}
  recs = {k: records.read_record(raw) for k, (_, raw) in _by_key(out).items()}
  assert recs["1.png"]["captions"] == ["x" * 2000]
  assert recs["0.png"]["captions"] == ["short"]
