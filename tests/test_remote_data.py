"""Data in a bucket: an image folder, tar shards and TFDS sets at `gs://`
URLs, prepared into a `gs://` data dir, read back by the input pipeline,
and streamed, give what the same data on a local disk gives, bit for bit.

The bucket is emulated in a local folder (`emulated_bucket.py`), which also
records every local file call handed a `gs:` path: a call site that went
around the path layer. Each test asserts there was none.
"""

import contextlib
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from emulated_bucket import EmulatedBucket
from txt2img_jax.data import imagefolder as ifo
from txt2img_jax.data import pipeline
from txt2img_jax.data import records_prepare
from txt2img_jax.data import staging
from txt2img_jax.data import tfds_shapes
from txt2img_jax.data import tfds_source
from txt2img_jax.data import tokenizer as tokenizer_lib
from txt2img_jax.data import webdataset as wds

from test_prepare_hosts import CHUNKED  # pylint: disable=g-bad-import-order
from test_prepare_hosts import _on_hosts
from test_prepare_hosts import _same_report
from test_records import OPTS
from test_records import TinyFolderTestCaptions
from test_records import _by_key
from test_records import _featurize
from test_records import bad_folder  # pylint: disable=unused-import
from test_webdataset import _streamed_and_prepared
from test_webdataset import clean_shards  # pylint: disable=unused-import
from test_webdataset import train_batches
from test_webdataset import shards_and_folder  # pylint: disable=unused-import


@contextlib.contextmanager
def _bucket(tmp_path, monkeypatch, **objects):
  """gs://bk/<name> holding a copy of each local dir in `objects`; the
  stage dir in tmp_path; no bypass of the path layer on the way out."""
  root = tmp_path / "bucket"
  for name, local in objects.items():
    shutil.copytree(local, root / "bk" / name)
  stage = tmp_path / "staged"
  monkeypatch.setenv(staging.STAGE_ENV, str(stage))
  with EmulatedBucket(root) as bucket:
    yield bucket
  assert bucket.bypasses == [], bucket.bypasses


def test_folder_and_shards_prepare_into_a_bucket_as_on_a_disk(
    bad_folder, shards_and_folder, tmp_path, monkeypatch
):
  """Every kind of bad input, in nested folders and in broken shards."""
  shards, _ = shards_and_folder
  folder = bad_folder
  wds_args = dict(caption_key="json:caption")
  local = {
      "folder": records_prepare.prepare(
          ifo.ImageFolderSource(folder),
          str(tmp_path / "folder"),
          featurize=_featurize(),
          **CHUNKED,
      ),
      "wds": records_prepare.prepare(
          wds.WebDatasetSource(f"{shards}/{{0000..0004}}.tar", **wds_args),
          str(tmp_path / "wds"),
          **OPTS,
      ),
  }
  with _bucket(tmp_path, monkeypatch, folder=folder, shards=shards) as bucket:
    remote = {
        "folder": records_prepare.prepare(
            ifo.ImageFolderSource("gs://bk/folder"),
            "gs://bk/data/folder",
            featurize=_featurize(),
            **CHUNKED,
        ),
        "wds": records_prepare.prepare(
            wds.WebDatasetSource("gs://bk/shards/{0000..0004}.tar", **wds_args),
            "gs://bk/data/wds",
            **OPTS,
        ),
    }
    # A glob of bucket objects lists the same shards.
    assert wds.shard_paths("gs://bk/shards/000[0-4].tar") == [
        f"gs://bk/shards/{i:04d}.tar" for i in range(5)
    ]
    for name in local:
      _same_report(remote[name], local[name])
      # The records' bytes: pixels, captions, keys, indices and features.
      assert _by_key(f"gs://bk/data/{name}") == _by_key(
          str(tmp_path / name)
      ), name
    # Prepared again: found complete and reused, nothing written.
    again = records_prepare.prepare(
        ifo.ImageFolderSource("gs://bk/folder"),
        "gs://bk/data/folder",
        featurize=_featurize(fail_on_call=1),
        **CHUNKED,
    )
    assert again == remote["folder"]
    written = bucket.local("gs://bk/data/folder")
  shards_written = sorted(
      f for f in os.listdir(written) if f.endswith(".array_record")
  )
  assert shards_written == sorted(
      f for f in os.listdir(tmp_path / "folder") if f.endswith(".array_record")
  )
  assert not [f for f in os.listdir(written) if f.endswith(".tmp")]
  # Shards were read from their staged copies, keyed by the manifest.
  staged = list(
      (tmp_path / "staged").glob("*/gs/bk/data/folder/*.array_record")
  )
  assert len(staged) == len(shards_written), staged


def test_hosts_share_a_bucket_dir(bad_folder, tmp_path, monkeypatch):
  folder = bad_folder
  ref = records_prepare.prepare(
      ifo.ImageFolderSource(folder),
      str(tmp_path / "one"),
      featurize=_featurize(),
      **CHUNKED,
  )
  with _bucket(tmp_path, monkeypatch, folder=folder):
    out = "gs://bk/data/hosts"
    results = _on_hosts(
        2,
        [out] * 2,
        [_featurize(), _featurize()],
        lambda: ifo.ImageFolderSource("gs://bk/folder"),
    )
    for r in results:
      assert isinstance(r, dict), r
      _same_report(r, ref)
    assert _by_key(out) == _by_key(str(tmp_path / "one"))


def _same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_the_input_pipeline_reads_a_bucket_as_a_disk(
    clean_shards, tmp_path, monkeypatch
):
  """Prepared records in a gs:// data dir, and gs:// tar shards streamed,
  give the batches their local copies give."""
  prepared, streamed = _streamed_and_prepared(clean_shards, tmp_path / "local")
  tok = tokenizer_lib.build_word_tokenizer(prepared.vocabulary(), 8)
  local = {
      "prepared": [train_batches(prepared, tok, s, 3) for s in (0, 5)],
      "streamed": [train_batches(streamed, tok, s, 3) for s in (0, 5)],
      "val": pipeline.load_split(prepared, "val", tokenizer=tok, max_len=8),
  }
  with _bucket(tmp_path, monkeypatch, clean=clean_shards):
    r_prepared, r_streamed = _streamed_and_prepared(
        "gs://bk/clean", "gs://bk/data"
    )
    assert r_prepared.out_dir.startswith("gs://bk/data/prepared/")
    assert r_streamed.out_dir.startswith("gs://bk/data/streamed/")
    assert r_prepared.vocabulary() == prepared.vocabulary()
    assert r_streamed.vocabulary() == prepared.vocabulary()
    for got, want in zip(
        [train_batches(r_prepared, tok, s, 3) for s in (0, 5)],
        local["prepared"],
    ):
      _same_batches(got, want)
    for got, want in zip(
        [train_batches(r_streamed, tok, s, 3) for s in (0, 5)],
        local["streamed"],
    ):
      _same_batches(got, want)
    val = pipeline.load_split(r_prepared, "val", tokenizer=tok, max_len=8)
    assert val["caption"] == local["val"]["caption"]
    np.testing.assert_array_equal(val["image"], local["val"]["image"])


SHAPES = dict(
    seed=0, image_size=16, num_train=8, num_test=4, num_heldout=4, jitter_px=1.0
)


def _shapes_records(builder):
  out = {}
  for split in ("train", "test", "heldout"):
    src = builder.as_data_source(split=split)
    out[split] = [
        (np.asarray(src[i]["image"]).tobytes(), src[i]["caption"])
        for i in range(len(src))
    ]
  return out


def test_shapes_in_a_bucket_data_dir(tmp_path, monkeypatch):
  want = _shapes_records(tfds_shapes.prepare(str(tmp_path / "disk"), **SHAPES))
  with _bucket(tmp_path, monkeypatch) as bucket:
    made = tfds_shapes.prepare("gs://bk/data", **SHAPES)
    assert _shapes_records(made) == want
    # Another machine (an empty stage dir) reads it from the bucket.
    shutil.rmtree(tmp_path / "staged")

    def never(*args, **kwargs):
      raise AssertionError("regenerated shapes data found in the bucket")

    monkeypatch.setattr(
        tfds_shapes.CaptionedShapes, "download_and_prepare", never
    )
    read = tfds_shapes.prepare("gs://bk/data", **SHAPES)
    assert _shapes_records(read) == want
  assert os.path.isfile(
      os.path.join(
          bucket.local("gs://bk/data"),
          "captioned_shapes",
          tfds_shapes.make_config(**SHAPES).name,
          "1.0.0",
          "dataset_info.json",
      )
  )


def test_a_tfds_set_in_a_bucket(tmp_path, monkeypatch):
  tfds.disable_progress_bar()
  tfds_dir = str(tmp_path / "tfds")
  TinyFolderTestCaptions(
      data_dir=tfds_dir, file_format="array_record"
  ).download_and_prepare(file_format="array_record")
  name = TinyFolderTestCaptions.name
  kw = dict(
      image_key="image", caption_key="meta/caption", val_split="validation"
  )
  local = records_prepare.prepare(
      tfds_source.TfdsSource(name, data_dir=tfds_dir, **kw),
      str(tmp_path / "out"),
      **OPTS,
  )
  with _bucket(tmp_path, monkeypatch, tfds=tfds_dir):
    src = tfds_source.TfdsSource(name, data_dir="gs://bk/tfds", **kw)
    assert src.fingerprint()["path"].startswith("gs://bk/tfds/")
    remote = records_prepare.prepare(src, "gs://bk/data/tfds", **OPTS)
    _same_report(remote, local)
    assert _by_key("gs://bk/data/tfds") == _by_key(str(tmp_path / "out"))


def test_stage_dir_is_local(monkeypatch):
  monkeypatch.setenv(staging.STAGE_ENV, "gs://bk/staged")
  with pytest.raises(ValueError, match="must be a local dir"):
    staging.stage_root()
