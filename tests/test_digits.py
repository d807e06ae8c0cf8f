"""The real-digits experiment's pieces: the folder it writes, and the digit
classifier that judges samples (its runs are exercised by test_cli through
the documented commands)."""

import json
import os

import numpy as np

from experiments import digits_data


def test_write_is_the_own_images_layout(tmp_path):
  n = digits_data.write(str(tmp_path), size=32)
  rows = [json.loads(l) for l in open(tmp_path / "metadata.jsonl")]
  assert n == len(rows) == 1797
  first = rows[0]
  assert os.path.exists(tmp_path / first["file_name"])
  label = int(first["file_name"].split("/")[0])
  assert first["text"] == digits_data.captions(label)
  assert f"a handwritten digit {digits_data.WORDS[label]}" in first["text"]


def test_reduce_to_8x8_recovers_the_digit():
  ink, _ = digits_data.load_digits()
  for size in (16, 64):
    back = digits_data.to_ink8(
        np.stack([digits_data.to_pixels(x, size) for x in ink[:50]]) / 255.0
    )
    corr = np.corrcoef(back.ravel(), ink[:50].reshape(50, 64).ravel())[0, 1]
    assert corr > 0.9, (size, corr)


def test_classifier_reads_held_out_real_digits():
  clf = digits_data.Classifier(64)
  assert clf.heldout_acc > 0.95
  # A sample whose digit is shifted off-centre by a quarter of the image is
  # another image: the classifier is no shape-blind ink counter.
  ink, labels = digits_data.load_digits()
  order = np.random.default_rng(0).permutation(len(labels))[
      int(0.8 * len(labels)) :
  ]
  images = (
      np.stack([digits_data.to_pixels(x, 64) for x in ink[order[:100]]]) / 255.0
  )
  right = (clf.predict(images) == labels[order[:100]]).mean()
  moved = np.roll(images, 16, axis=2)
  moved[:, :, :16] = 1.0  # White paper where the roll wrapped ink around.
  assert (
      right > 0.95 and (clf.predict(moved) == labels[order[:100]]).mean() < 0.5
  )
