"""Frozen CLIP / T5 text encoders from PyTorch safetensors, read with numpy.

Tiny random models are saved by the PyTorch classes (torch is a test-only dependency), in a
child process: the package sets USE_TORCH=0, and transformers decides once per process whether
torch exists. The loaded Flax encoder must give the PyTorch model's features, and loading must
not import torch.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import transformers

from txt2img_jax.models import text_encoder
from txt2img_jax.models import text_encoder_weights
from txt2img_jax.utils import hub

if importlib.util.find_spec("torch") is None:
  pytest.skip("torch (test-only) is not installed", allow_module_level=True)

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)

MAX_LEN = 8
WORDS = [
    "[PAD]",
    "[UNK]",
    "[EOS]",
    "a",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "big",
]
CAPTIONS = ["a red circle", "big blue square a green circle", "square"]


def tiny_tokenizer():
  import tokenizers

  tok = tokenizers.Tokenizer(
      tokenizers.models.WordLevel(
          {w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"
      )
  )
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token="[PAD]",
      unk_token="[UNK]",
      eos_token="[EOS]",
      model_max_length=MAX_LEN,
  )


def tiny_torch_model(kind, seed=0):
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  if kind == "clip":
    cfg = transformers.CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(WORDS),
        max_position_embeddings=MAX_LEN,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2,
    )
    return transformers.CLIPTextModel(cfg)
  if kind == "clip_full":  # A whole CLIPModel folder (text + vision towers).
    cfg = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(WORDS),
            max_position_embeddings=MAX_LEN,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=16,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return transformers.CLIPModel(cfg)
  cfg = transformers.T5Config(
      d_model=32,
      d_ff=37,
      num_layers=2,
      num_heads=4,
      d_kv=8,
      vocab_size=len(WORDS),
      relative_attention_num_buckets=8,
      pad_token_id=0,
      eos_token_id=2,
      decoder_start_token_id=0,
  )
  return transformers.T5EncoderModel(cfg)


def _save_in_torch(specs):
  """In the child: [(kind, seed, path)] -> folders, each with `reference.npz` (the PyTorch
  model's features of CAPTIONS, and their ids and mask)."""
  import torch  # pylint: disable=g-import-not-at-top

  for kind, seed, path in specs:
    model = tiny_torch_model(kind, seed).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(path)
    batch = tokenizer(
        CAPTIONS,
        padding="max_length",
        max_length=MAX_LEN,
        truncation=True,
        return_tensors="np",
    )
    text_model = model.text_model if kind == "clip_full" else model
    with torch.no_grad():
      out = text_model(
          input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
          attention_mask=torch.tensor(
              batch["attention_mask"], dtype=torch.long
          ),
      )
    np.savez(
        os.path.join(path, "reference.npz"),
        ids=batch["input_ids"],
        mask=batch["attention_mask"],
        features=out.last_hidden_state.numpy(),
    )


def _clip_score_in_torch(path, images_path, prompts):
  """In the child: torchmetrics' CLIP score definition on a CLIPModel folder, for images already
  at the model's size (so no resize) in [0, 1], (N, S, S, 3)."""
  import torch  # pylint: disable=g-import-not-at-top

  model = transformers.CLIPModel.from_pretrained(path).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  images = np.load(images_path)
  mean = np.array([0.48145466, 0.4578275, 0.40821073])
  std = np.array([0.26862954, 0.26130258, 0.27577711])
  x = torch.tensor(
      ((images - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32
  )
  batch = tokenizer(
      prompts,
      padding="max_length",
      max_length=MAX_LEN,
      truncation=True,
      return_tensors="pt",
  )
  with torch.no_grad():
    img = model.get_image_features(pixel_values=x)
    txt = model.get_text_features(**batch)
  cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
  print(float(torch.clamp(100 * cos, min=0).mean()))


def torch_clip_score(path, images, prompts, tmp_dir):
  images_path = os.path.join(tmp_dir, "images.npy")
  np.save(images_path, images)
  code = (
      "import json, sys, test_text_encoders as t; "
      "t._clip_score_in_torch(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))"
  )
  env = dict(
      os.environ, USE_TORCH="1", PYTHONPATH=os.pathsep.join([TESTS, REPO])
  )
  out = subprocess.run(
      [sys.executable, "-c", code, path, images_path, json.dumps(prompts)],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return float(out.stdout.strip().splitlines()[-1])


def save_tiny_encoders(specs):
  """Saves tiny random encoders [(kind, seed, path)] with PyTorch's classes (safetensors only)."""
  specs = [(k, s, str(p)) for k, s, p in specs]
  code = (
      "import json, sys, test_text_encoders as t; "
      "t._save_in_torch(json.loads(sys.argv[1]))"
  )
  env = dict(
      os.environ, USE_TORCH="1", PYTHONPATH=os.pathsep.join([TESTS, REPO])
  )
  out = subprocess.run(
      [sys.executable, "-c", code, json.dumps(specs)],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  for _, _, path in specs:
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert not os.path.exists(os.path.join(path, "flax_model.msgpack"))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
  root = tmp_path_factory.mktemp("encoders")
  specs = [
      ("clip", 0, root / "clip"),
      ("clip_full", 0, root / "clip_full"),
      ("t5", 0, root / "t5"),
      ("clip", 1, root / "clip_seed1"),
  ]
  save_tiny_encoders(specs)
  return {p.name: str(p) for _, _, p in specs}


@pytest.mark.parametrize("kind", ["clip", "clip_full", "t5"])
def test_safetensors_encoder_matches_torch(kind, encoders):
  enc = text_encoder.load_pretrained_text_encoder(encoders[kind])
  assert enc.width == 32 and enc.max_len == MAX_LEN
  batch = enc.tokenizer(
      CAPTIONS,
      padding="max_length",
      max_length=MAX_LEN,
      truncation=True,
      return_tensors="np",
  )
  ids, mask = batch["input_ids"], batch["attention_mask"]
  ref = np.load(os.path.join(encoders[kind], "reference.npz"))
  np.testing.assert_array_equal(ids, ref["ids"])
  assert mask.sum(1).tolist() == [3, 6, 1]
  ours = np.asarray(jax.jit(enc.apply)(enc.params, ids, mask))
  theirs = ref["features"]
  valid = mask.astype(bool)
  # Padded positions are never read downstream (the head masks them), so compare valid tokens.
  err = np.abs(ours - theirs)[valid].max() / np.abs(theirs[valid]).max()
  assert err <= 1e-4, err


def test_fingerprint_follows_weights_and_max_len(encoders, tmp_path):
  a = text_encoder.load_pretrained_text_encoder(encoders["clip"])
  assert (
      a.fingerprint()
      == text_encoder.load_pretrained_text_encoder(
          encoders["clip"]
      ).fingerprint()
  )
  assert (
      a.fingerprint()
      != text_encoder.load_pretrained_text_encoder(
          encoders["clip"], max_len=MAX_LEN - 2
      ).fingerprint()
  )
  # Same architecture, other weights.
  assert (
      text_encoder.load_pretrained_text_encoder(
          encoders["clip_seed1"]
      ).fingerprint()
      != a.fingerprint()
  )
  # The same weights in Flax's own format have the same identity.
  flax_model = transformers.FlaxCLIPTextModel(
      transformers.CLIPTextConfig.from_pretrained(encoders["clip"]),
      _do_init=False,
  )
  flax_model.save_pretrained(str(tmp_path), params=a.params)
  tiny_tokenizer().save_pretrained(str(tmp_path))
  c = text_encoder.load_pretrained_text_encoder(str(tmp_path))
  assert c.identity["weights"] == a.identity["weights"]
  assert c.fingerprint() == a.fingerprint()


def test_loading_safetensors_does_not_import_torch(encoders):
  code = (
      "import sys; from txt2img_jax.models import text_encoder as t; "
      f'e = t.load_pretrained_text_encoder({encoders["t5"]!r}); '
      'assert "torch" not in sys.modules, "torch was imported"; print(e.width)'
  )
  # USE_TORCH unset, as for a user (test_kl_vae sets it to 1 in this process for diffusers).
  env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"}
  out = subprocess.run(
      [sys.executable, "-c", code],
      capture_output=True,
      text=True,
      cwd=REPO,
      env=env,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith("32")


def test_mismatched_weights_are_a_clear_error(encoders, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.copytree(encoders["clip"], tmp_path, dirs_exist_ok=True)
  cfg = transformers.CLIPTextConfig.from_pretrained(str(tmp_path))
  cfg.num_hidden_layers = (
      3  # The config now asks for a layer the file does not have.
  )
  cfg.save_pretrained(str(tmp_path))
  with pytest.raises(
      ValueError, match=r"missing: text_model\.encoder\.layers\.2"
  ):
    text_encoder.load_pretrained_text_encoder(str(tmp_path))


def test_folder_without_weights_is_a_clear_error(encoders, tmp_path):
  transformers.AutoConfig.from_pretrained(encoders["t5"]).save_pretrained(
      str(tmp_path)
  )
  tiny_tokenizer().save_pretrained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    text_encoder.load_pretrained_text_encoder(str(tmp_path))
  assert not text_encoder_weights.has_safetensors(str(tmp_path))


def test_clip_score_matches_torch(encoders, tmp_path):
  from txt2img_jax.evaluation import prompts as evaluate_prompts  # pylint: disable=g-import-not-at-top

  scorer = evaluate_prompts.ClipScorer(encoders["clip_full"])
  assert scorer.size == 16
  images = (
      np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
  )
  ours = scorer(images, CAPTIONS)
  theirs = torch_clip_score(
      encoders["clip_full"], images, CAPTIONS, str(tmp_path)
  )
  assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)
  assert 0.0 <= ours <= 100.0
  # In fixed batches (the last one padded), each pair scores as alone.
  per_pair = scorer.scores(images, CAPTIONS)
  scorer.BATCH = 2
  np.testing.assert_allclose(
      scorer.scores(images, CAPTIONS), per_pair, rtol=1e-5
  )
  single = [
      scorer.scores(images[i : i + 1], CAPTIONS[i : i + 1]) for i in range(3)
  ]
  np.testing.assert_allclose(np.concatenate(single), per_pair, rtol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "clip_full", "t5"])
def test_described_encoder_has_the_loaded_ones_shapes(kind, encoders):
  """What ahead-of-time compilation builds from config.json alone."""
  loaded = text_encoder.load_pretrained_text_encoder(encoders[kind])
  described = text_encoder.describe_pretrained_text_encoder(encoders[kind])
  shape = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shape(described.params) == shape(loaded.params)
  assert described.width == loaded.width
  assert described.model_type == loaded.model_type
  ids = np.zeros((2, 5), np.int32)
  out = jax.eval_shape(described.apply, described.params, ids, ids)
  assert out.shape == (2, 5, loaded.width)


def test_a_hub_name_from_a_run_resolves_from_the_cache_only():
  # Under local_files_only (what sample/evaluate use for a run's own
  # config.json) a name not in the cache fails at once, naming the way out,
  # instead of trying the network.
  with text_encoder.local_files_only():
    with pytest.raises(FileNotFoundError, match="--allow_download"):
      text_encoder.load_pretrained_text_encoder("txt2img-tests/not-cached")
  assert hub._LOCAL_ONLY == [False]  # Restored on the way out.


def _cache_snapshot(hf_home, repo_id, folder, commit="0" * 40):
  """`folder` laid out as huggingface_hub caches a download of `repo_id`."""
  repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
  os.makedirs(os.path.join(repo, "refs"))
  with open(os.path.join(repo, "refs", "main"), "w") as f:
    f.write(commit)
  shutil.copytree(folder, os.path.join(repo, "snapshots", commit))
  return os.path.join(repo, "snapshots", commit)


def test_hub_ids_resolve_through_the_cache(encoders, tmp_path, monkeypatch):
  hf_home = str(tmp_path / "hf")
  monkeypatch.setenv("HF_HOME", hf_home)
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # The test never reaches out.
  snap = _cache_snapshot(hf_home, "txt2img-tests/tiny-clip", encoders["clip"])
  assert hub.model_folder("txt2img-tests/tiny-clip", "f") == snap
  by_id = text_encoder.load_pretrained_text_encoder("txt2img-tests/tiny-clip")
  by_folder = text_encoder.load_pretrained_text_encoder(encoders["clip"])
  assert by_id.identity["weights"] == by_folder.identity["weights"]
  assert by_id.width == by_folder.width
  # A third part names a folder inside the repo (a pipeline's vae/ or
  # text_encoder/).
  os.makedirs(tmp_path / "pipe")
  shutil.copytree(encoders["t5"], tmp_path / "pipe" / "text_encoder")
  _cache_snapshot(hf_home, "txt2img-tests/pipe", tmp_path / "pipe")
  t5 = text_encoder.load_pretrained_text_encoder(
      "txt2img-tests/pipe/text_encoder"
  )
  assert t5.model_type == "t5"
  # The KL-VAE's path goes through the same resolution.
  os.makedirs(tmp_path / "vae_repo")
  with open(tmp_path / "vae_repo" / "config.json", "w") as f:
    json.dump({"block_out_channels": [8, 8, 8], "latent_channels": 4}, f)
  _cache_snapshot(hf_home, "txt2img-tests/vae", tmp_path / "vae_repo")
  from configs import folder  # pylint: disable=g-import-not-at-top
  from txt2img_jax.models import latents  # pylint: disable=g-import-not-at-top

  c = folder.get_config()
  c.autoencoder.kind, c.autoencoder.path = "kl_vae", "txt2img-tests/vae"
  assert latents.latent_shape(c) == (16, 16, 4)  # 64 px / 4, 4 channels.
  with pytest.raises(FileNotFoundError, match="has no folder 'vae'"):
    hub.model_folder("txt2img-tests/pipe/vae", "autoencoder.path")
  with pytest.raises(
      FileNotFoundError, match="HF_HUB_OFFLINE is set.*huggingface-cli download"
  ):
    hub.model_folder("txt2img-tests/absent", "eval.clip_model")
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    hub.model_folder("/no/such/folder", "text_encoder.name")
