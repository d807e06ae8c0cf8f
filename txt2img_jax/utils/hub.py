"""Models named as users name them: a local folder or a Hugging Face hub id.

`text_encoder.name`, `autoencoder.path` and `eval.clip_model` accept a
folder, or a hub id (`openai/clip-vit-base-patch32`,
`stabilityai/sd-vae-ft-mse`; a third part names a subfolder of the repo,
e.g. `stable-diffusion-v1-5/stable-diffusion-v1-5/vae`). A hub id resolves
to its snapshot in huggingface_hub's cache (`HF_HOME`, `HF_HUB_CACHE`),
fetched there first where the network allows it. With `HF_HUB_OFFLINE=1`,
or within `local_files_only()` (a received run's config.json must not reach
the network), only the cache is read. The loaders then read a plain folder.
"""

from __future__ import annotations

import contextlib
import os
import re

# Only what the loaders read is fetched: weights as safetensors or Flax
# msgpack, configs and tokenizer files (never PyTorch pickles).
ALLOW_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.msgpack",
    "*.txt",
    "*.model",
    "tokenizer*",
    "vocab*",
    "merges*",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_LOCAL_ONLY = [False]


@contextlib.contextmanager
def local_files_only():
  """Within: a hub id is read from the local cache only, never fetched."""
  before = _LOCAL_ONLY[0]
  _LOCAL_ONLY[0] = True
  try:
    yield
  finally:
    _LOCAL_ONLY[0] = before


def offline() -> bool:
  env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
  return _LOCAL_ONLY[0] or env in ("1", "true", "yes", "on")


def cache_dir() -> str:
  """huggingface_hub's cache, read from the environment at each call."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.path.expanduser(os.environ["HF_HUB_CACHE"])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"
  )
  return os.path.join(os.path.expanduser(home), "hub")


def is_repo_id(name: str) -> bool:
  return bool(_REPO_ID.match(name)) and not name.startswith(("./", "../"))


def model_folder(name: str, field: str) -> str:
  """A local folder for `name` (the value of config field `field`): the
  folder itself, or the cached snapshot of a hub id. One-line errors."""
  path = os.path.expanduser(name)
  if os.path.isdir(path):
    return path
  if not is_repo_id(name):
    raise FileNotFoundError(f"{field}={name!r} is not a folder")
  parts = name.split("/")
  repo_id, sub = "/".join(parts[:2]), parts[2:]
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top

  local_only = offline()
  cache = cache_dir()
  try:
    root = snapshot_download(
        repo_id=repo_id,
        cache_dir=cache,
        local_files_only=local_only,
        allow_patterns=list(ALLOW_PATTERNS),
    )
  except Exception as e:  # pylint: disable=broad-except
    # huggingface_hub raises many types (not cached, offline, no such
    # repo, HTTP); each is the same answer for the user.
    if _LOCAL_ONLY[0]:
      how = (
          "a run's files never reach the network: pass --allow_download to "
          "fetch it"
      )
    elif local_only:
      how = "HF_HUB_OFFLINE is set: fetch it where the network is allowed"
    else:
      how = f"it could not be fetched ({type(e).__name__})"
    raise FileNotFoundError(
        f"{field}={name!r} is neither a local folder nor in the Hugging Face "
        f"cache ({cache}); {how}, e.g. `huggingface-cli "
        f"download {repo_id}`, or give a folder"
    ) from None
  folder = os.path.join(root, *sub)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"{field}={name!r}: the hub repo {repo_id!r} has no folder "
        f"{'/'.join(sub)!r}"
    )
  return folder
