"""Started with this folder on PYTHONPATH and `TXT2IMG_TEST_BUCKET=ROOT` in
the environment, every Python process (the processes `launch_local` starts
too) sees `gs://` emulated in ROOT (`tests/emulated_bucket.py`) and prints
`BYPASS: ...` at exit for each local file call it handed a `gs:` path. Tests
only."""

import atexit
import os
import sys

if os.environ.get("TXT2IMG_TEST_BUCKET"):
  sys.path.insert(
      0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  from emulated_bucket import EmulatedBucket  # pylint: disable=g-import-not-at-top

  _BUCKET = EmulatedBucket(os.environ["TXT2IMG_TEST_BUCKET"]).__enter__()

  @atexit.register
  def _report() -> None:
    for call in dict.fromkeys(_BUCKET.bypasses):
      print(f"BYPASS: {call}", file=sys.stderr)
