"""WebDataset tar shards as a prepare source: written here, broken ones too."""

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest

from txt2img_jax.data import imagefolder as ifo
from txt2img_jax.data import inputs
from txt2img_jax.data import pipeline
from txt2img_jax.data import records
from txt2img_jax.data import records_prepare
from txt2img_jax.data import webdataset as wds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from test_records import OPTS  # pylint: disable=g-bad-import-order


def train_batches(data, tok, start, n=4):
  """Batches start .. start + n - 1 of the input pipeline over `data` (2
  examples each, captions of 8 tokens, a fixed shuffle)."""
  ds = pipeline.train_dataset(
      data,
      tokenizer=tok,
      max_len=8,
      global_batch_size=2,
      seed=3,
      process_index=0,
      process_count=1,
  )
  return [ds[s] for s in range(start, start + n)]


def test_expand_braces():
  assert wds.expand_braces("d/{000..002}.tar") == [
      "d/000.tar",
      "d/001.tar",
      "d/002.tar",
  ]
  assert wds.expand_braces("{a,b}/{8..10}.tar") == [
      "a/8.tar",
      "a/9.tar",
      "a/10.tar",
      "b/8.tar",
      "b/9.tar",
      "b/10.tar",
  ]
  assert wds.expand_braces("plain.tar") == ["plain.tar"]
  assert wds.split_member_name("x/000123.jpg") == ("x/000123", "jpg")
  assert wds.split_member_name("a.b.JSON") == ("a", "b.json")


def _image_bytes(i: int, fmt: str) -> bytes:
  rng = np.random.default_rng(i)
  a = rng.integers(0, 256, (24 + i, 20 + 2 * i, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format=fmt)
  return buf.getvalue()


def _tar(path, members):
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


GOOD = [  # (key, format, captions)
    ("s00", "PNG", ["a red square"]),
    ("s01", "JPEG", ["a blue circle", "a round blue thing"]),
    ("s02", "PNG", ["two green lines"]),
    ("s03", "JPEG", ["noise"]),
    ("s04", "PNG", ["more noise"]),
    ("s05", "PNG", ["the last good one"]),
]


@pytest.fixture(scope="module")
def shards_and_folder(tmp_path_factory):
  """The GOOD samples as tar shards (plus bad ones) and as an image folder."""
  root = tmp_path_factory.mktemp("wds")
  shards, folder = root / "shards", root / "folder"
  shards.mkdir()
  folder.mkdir()
  images = {k: _image_bytes(i, fmt) for i, (k, fmt, _) in enumerate(GOOD)}
  ext = {k: "jpg" if fmt == "JPEG" else "png" for k, fmt, _ in GOOD}
  rows = []
  for k, _, caps in GOOD:
    (folder / f"{k}.{ext[k]}").write_bytes(images[k])
    rows.append(json.dumps({"file_name": f"{k}.{ext[k]}", "text": caps}))
  (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")

  def txt_and_json(k, caps, image=None):
    # Both caption members, so either caption key reads every sample.
    return [
        (f"{k}.{ext.get(k, 'png')}", image or images[k]),
        (f"{k}.txt", caps[0].encode()),
        (f"{k}.json", json.dumps({"caption": caps, "meta": {"k": k}}).encode()),
    ]

  members0 = [m for k, _, c in GOOD[:3] for m in txt_and_json(k, c)]
  members0 += [
      ("bad/nocap.png", images["s00"]),  # No caption member: empty_caption.
      ("bad/noimage.txt", b"a caption without its image"),
      ("bad/broken.png", images["s02"][:200]),  # Cut PNG.
      ("bad/broken.txt", b"a broken image"),
      ("bad/notimg.jpg", b"this is not an image at all"),
      ("bad/notimg.txt", b"not an image"),
  ]
  _tar(shards / "0000.tar", members0)
  members1 = [m for k, _, c in GOOD[3:] for m in txt_and_json(k, c)]
  members1 += [("s00.png", images["s00"]), ("s00.txt", b"dup")]  # Duplicate.
  _tar(shards / "0001.tar", members1)
  # A shard cut short inside its second sample: the first one is kept.
  _tar(
      shards / "whole.tar",
      txt_and_json("t0", ["kept from a cut shard"], images["s05"])
      + txt_and_json("t1", ["lost"], images["s04"]),
  )
  with tarfile.open(shards / "whole.tar") as tar:
    cut = tar.getmember("t1.png").offset_data + 10
  whole = (shards / "whole.tar").read_bytes()
  os.remove(shards / "whole.tar")
  (shards / "0002.tar").write_bytes(whole[:cut])
  (shards / "0003.tar").write_bytes(gzip.compress(whole))  # Compressed.
  (shards / "0004.tar").write_bytes(b"not a tar file" * 10)
  return str(shards), str(folder)


def _records(out):
  got = {}
  for split in ("train", "val"):
    src = records.PreparedSource(out, split)
    for i in range(len(src)):
      key = records.read_record(src[i])["key"]
      rec = records.decode_record(src[i])
      got[key] = (rec["captions"], records.decode_image_uint8(src[i]))
  return got


def test_shards_prepare_like_the_same_images_in_a_folder(
    shards_and_folder, tmp_path
):
  shards, folder = shards_and_folder
  src = wds.WebDatasetSource(
      os.path.join(shards, "{0000..0004}.tar"), caption_key="json:caption"
  )
  report = records_prepare.prepare(src, str(tmp_path / "wds"), **OPTS)
  counts = {r: v["count"] for r, v in report["reasons"].items()}
  assert counts == {
      inputs.BAD_SHARD: 3,  # 0002 cut short, 0003 compressed, 0004 no tar.
      inputs.EMPTY_CAPTION: 2,  # No JSON member: bad/nocap, bad/broken.
      inputs.NOT_AN_IMAGE: 1,  # bad/notimg.jpg (opened before the caption).
      inputs.MISSING_FILE: 1,  # bad/noimage: no image member.
      inputs.DUPLICATE_ROW: 1,  # s00 again in 0001.tar.
  }, report["reasons"]
  first = report["reasons"][inputs.BAD_SHARD]["first"]
  assert [f["path"] for f in first] == ["0002.tar", "0003.tar", "0004.tar"]
  assert "the 1 sample(s) listed before it are kept" in first[0]["detail"]
  assert "compressed" in first[1]["detail"]

  by_txt = wds.WebDatasetSource(os.path.join(shards, "000[0-4].tar"))
  report_txt = records_prepare.prepare(by_txt, str(tmp_path / "txt"), **OPTS)
  counts = {r: v["count"] for r, v in report_txt["reasons"].items()}
  assert counts[inputs.EMPTY_CAPTION] == 1  # bad/nocap only.
  assert counts[inputs.CORRUPT_IMAGE] == 1  # bad/broken.png
  assert counts[inputs.NOT_AN_IMAGE] == 1  # bad/notimg.jpg
  got = _records(str(tmp_path / "txt"))
  assert got["t0"][0] == ["kept from a cut shard"]

  ref = records_prepare.prepare(
      ifo.ImageFolderSource(folder), str(tmp_path / "folder"), **OPTS
  )
  assert ref["written"]["train"] + ref["written"]["val"] == len(GOOD)
  from_folder = _records(str(tmp_path / "folder"))
  from_shards = _records(str(tmp_path / "wds"))
  assert sorted(from_shards) == [k for k, _, _ in GOOD] + ["t0"]
  for k, fmt, caps in GOOD:
    f_caps, f_img = from_folder[f"{k}.{'jpg' if fmt == 'JPEG' else 'png'}"]
    s_caps, s_img = from_shards[k]
    assert s_caps == f_caps == caps
    np.testing.assert_array_equal(s_img, f_img)  # Bit-identical pixels.


def test_a_changed_shard_is_noticed(shards_and_folder, tmp_path):
  shards, _ = shards_and_folder
  pattern = os.path.join(shards, "0001.tar")
  a = wds.WebDatasetSource(pattern).fingerprint()
  b = wds.WebDatasetSource(pattern).fingerprint()
  assert a == b
  copy = tmp_path / "0001.tar"
  copy.write_bytes(open(pattern, "rb").read() + b"\0" * 1024)
  assert (
      wds.WebDatasetSource(str(copy)).fingerprint()["files_digest"]
      != a["files_digest"]
  )


def test_bad_patterns_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="names no tar shard"):
    wds.shard_paths(str(tmp_path / "*.tar"))
  (tmp_path / "00.tar").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="1 of its shards do not exist"):
    wds.shard_paths(str(tmp_path / "{00..01}.tar"))
  with pytest.raises(ValueError, match="needs data.path"):
    wds.shard_paths("")


def test_prepare_command_on_shards(shards_and_folder, tmp_path):
  shards, _ = shards_and_folder
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [
      sys.executable,
      "-m",
      "txt2img_jax.prepare",
      "--config=configs/folder.py:tiny",
      "--config.data.name=webdataset",
      f"--config.data.data_dir={tmp_path}",
  ]

  def prepare(pattern):
    return subprocess.run(
        base + [f"--config.data.path={shards}/{pattern}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

  ok = prepare("{0000..0001}.tar")
  assert ok.returncode == 0, ok.stderr[-2000:]
  (prepared,) = [
      d
      for d in os.listdir(tmp_path / "prepared")
      if d.startswith("webdataset_shards_s16_")
  ]
  with open(tmp_path / "prepared" / prepared / records.REPORT) as f:
    report = json.load(f)
  assert sum(report["written"].values()) == len(GOOD)
  bad = prepare("{0000..0009}.tar")
  assert bad.returncode == 1
  lines = [l for l in bad.stderr.splitlines() if l.strip()]
  assert lines[-1].startswith("prepare: error:"), bad.stderr[-2000:]
  assert "5 of its shards do not exist" in lines[-1]


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory):
  """Twelve good samples (lists of captions in KEY.json) over three shards."""
  root = tmp_path_factory.mktemp("clean")
  for s in range(3):
    members = []
    for i in range(4):
      k = f"{s}{i:03d}"
      members.append((f"{k}.png", _image_bytes(4 * s + i, "PNG")))
      caps = [f"sample {k}", f"shard {s} number {i}"]
      members.append((f"{k}.json", json.dumps({"caption": caps}).encode()))
    _tar(root / f"{s:04d}.tar", members)
  return str(root)


def _streamed_and_prepared(
    shards, tmp_path, pattern="{0000..0002}.tar", caption_key="json:caption"
):
  from configs import folder  # pylint: disable=g-import-not-at-top
  from txt2img_jax.data import sources  # pylint: disable=g-import-not-at-top

  c = folder.get_config("tiny")
  c.data.name = "webdataset"
  c.data.path = os.path.join(shards, pattern)
  c.data.data_dir = str(tmp_path)
  c.data.val_count = 2
  c.data.wds_caption_key = caption_key
  prepared = sources.prepare(c)
  c.data.stream = True
  streamed = sources.prepare(c)
  return prepared, streamed


def test_streamed_shards_train_on_what_their_prepared_records_hold(
    clean_shards, tmp_path
):
  from txt2img_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  prepared, streamed = _streamed_and_prepared(clean_shards, tmp_path)
  assert "streamed" in streamed.out_dir and not hasattr(streamed, "manifest")
  for split in ("train", "val"):
    assert streamed.split_size(split) == prepared.split_size(split)
  assert streamed.vocabulary() == prepared.vocabulary()
  tok = tokenizer_lib.build_word_tokenizer(prepared.vocabulary(), 8)

  # The same batches, and a resumed stream goes on at the same position.
  for start in (0, 5):
    for a, b in zip(
        train_batches(prepared, tok, start), train_batches(streamed, tok, start)
    ):
      assert sorted(a) == sorted(b)
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  val_p = pipeline.load_split(prepared, "val", tokenizer=tok, max_len=8)
  val_s = pipeline.load_split(streamed, "val", tokenizer=tok, max_len=8)
  assert val_p["caption"] == val_s["caption"]
  np.testing.assert_array_equal(val_p["image"], val_s["image"])


def test_a_bad_streamed_sample_is_replaced_by_the_next(
    shards_and_folder, tmp_path
):
  shards, _ = shards_and_folder
  # The fixture's first shard has unusable samples; bad/broken is a cut
  # PNG with a caption.
  _, streamed = _streamed_and_prepared(shards, tmp_path, "0000.tar", "txt")
  decode = streamed.decode_transform()
  splits = streamed._splits  # pylint: disable=protected-access
  (split,) = [s for s in splits if "bad/broken" in [c.key for c in splits[s]]]
  keys = [c.key for c in splits[split]]
  bad = keys.index("bad/broken")
  got = decode.map((split, bad))
  want = decode.map((split, (bad + 1) % len(keys)))
  np.testing.assert_array_equal(got["image"], want["image"])
  assert got["captions"] == want["captions"]
