"""Runs a command with `gs://` emulated in a local folder (tests only).

    python tests/with_bucket.py ROOT -m txt2img_jax.main --workdir=gs://b/run ...

`gs://<bucket>/<key>` is `ROOT/<bucket>/<key>` for everything that goes
through the path layer (see `emulated_bucket.py`). When the command ends,
every local file call that was handed a `gs:` path (a call site that went
around the layer) is printed as `BYPASS: ...` and the exit status is 3.
"""

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from emulated_bucket import EmulatedBucket  # noqa: E402


def main() -> int:
  if len(sys.argv) < 4 or sys.argv[2] != "-m":
    print(__doc__, file=sys.stderr)
    return 2
  root, module, args = sys.argv[1], sys.argv[3], sys.argv[4:]
  sys.argv = [module, *args]
  code = 0
  with EmulatedBucket(root) as bucket:
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (1 if e.code else 0)
  for call in dict.fromkeys(bucket.bypasses):
    print(f"BYPASS: {call}", file=sys.stderr)
  return 3 if bucket.bypasses and code == 0 else code


if __name__ == "__main__":
  sys.exit(main())
