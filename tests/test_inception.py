"""The FID Inception in JAX against the same network in PyTorch, random weights.

pytorch-fid builds its network from torchvision's Inception blocks, and
torchvision's CPU build is not installable beside this project's CPU torch;
so the reference below is pytorch-fid's network written out in torch (its
module names, hence its state dict's, its FID-specific pools, its resize and
scaling). The weights file a user brings is that state dict.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from txt2img_jax.evaluation import features as features_lib  # pylint: disable=g-import-not-at-top,g-bad-import-order
from txt2img_jax.evaluation import inception  # pylint: disable=g-import-not-at-top
from txt2img_jax.evaluation import torch_weights  # pylint: disable=g-import-not-at-top


class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class A(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool, kernel_size=1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg(x))
    return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class B(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), bd, F.max_pool2d(x, 3, stride=2)], 1)


class C(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    k17, k71 = dict(kernel_size=(1, 7), padding=(0, 3)), dict(
        kernel_size=(7, 1), padding=(3, 0)
    )
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, **k17)
    self.branch7x7_3 = BasicConv2d(c7, 192, **k71)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, **k71)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, **k17)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, **k71)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, **k17)
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for i in range(2, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    bp = self.branch_pool(_avg(x))
    return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class D(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(
        192, 192, kernel_size=(1, 7), padding=(0, 3)
    )
    self.branch7x7x3_3 = BasicConv2d(
        192, 192, kernel_size=(7, 1), padding=(3, 0)
    )
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_1(x)
    for i in range(2, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class E(nn.Module):

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(
        384, 384, kernel_size=(1, 3), padding=(0, 1)
    )
    self.branch3x3_2b = BasicConv2d(
        384, 384, kernel_size=(3, 1), padding=(1, 0)
    )
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(
        384, 384, kernel_size=(1, 3), padding=(0, 1)
    )
    self.branch3x3dbl_3b = BasicConv2d(
        384, 384, kernel_size=(3, 1), padding=(1, 0)
    )
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = (
        F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
    )
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FidInception(nn.Module):
  """pytorch-fid's InceptionV3(use_fid_inception=True), block 3 (pool3)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
        A(192, 32),
        A(256, 64),
        A(288, 64),
    )
    self.Mixed_6a = B(288)
    self.Mixed_6b, self.Mixed_6c = C(768, 128), C(768, 160)
    self.Mixed_6d, self.Mixed_6e = C(768, 160), C(768, 192)
    self.Mixed_7a = D(768)
    self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
    self.fc = nn.Linear(2048, 1008)  # In the released file; unused.

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
    for name in (
        "Mixed_5b Mixed_5c Mixed_5d Mixed_6a Mixed_6b Mixed_6c Mixed_6d "
        "Mixed_6e Mixed_7a Mixed_7b Mixed_7c"
    ).split():
      x = getattr(self, name)(x)
    return F.adaptive_avg_pool2d(x, (1, 1))[:, :, 0, 0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  torch.manual_seed(0)
  net = FidInception().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.Conv2d):  # Scaled so activations stay O(1).
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  root = tmp_path_factory.mktemp("inception")
  new, old = str(root / "zip.pth"), str(root / "legacy.pth")
  torch.save(net.state_dict(), new)
  torch.save(net.state_dict(), old, _use_new_zipfile_serialization=False)
  return net, new, old


@pytest.mark.parametrize("side", [64, 331])  # Up- and downsampled to 299.
def test_features_match_the_torch_network(reference, side):
  net, path, _ = reference
  images = np.random.default_rng(side).random((2, side, side, 3), np.float32)
  with torch.no_grad():
    theirs = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  feats = features_lib.load("inception", 0, path)
  ours = feats(images)
  assert ours.shape == (2, 2048) and feats.dim == 2048
  assert np.abs(theirs).max() > 1e-2  # Not a dead network.
  err = np.abs(ours - theirs).max() / np.abs(theirs).max()
  assert err < 1e-4, err


def test_both_torch_file_layouts_read_the_same(reference):
  net, new, old = reference
  a, b = torch_weights.load_state_dict(new), torch_weights.load_state_dict(old)
  want = {k: v.numpy() for k, v in net.state_dict().items()}
  assert sorted(a) == sorted(b) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(a[k], v)
    np.testing.assert_array_equal(b[k], v)
  assert a["Mixed_5b.branch1x1.bn.num_batches_tracked"].dtype == np.int64
  params = inception.load_params(new)
  assert "fc.weight" not in params and all(
      v.dtype == np.float32 for v in params.values()
  )


def test_tensor_layouts_and_dtypes(tmp_path):
  t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
  state = {
      "transposed": t.t(),  # A view: strides, not a copy.
      "slice": t[1:, 2:],  # A storage offset.
      "half": t.half(),
      "bf16": t.bfloat16(),
      "int": torch.tensor(7),
      "nested": {"x": torch.ones(2)},
  }
  for legacy in (False, True):
    path = str(tmp_path / f"s{legacy}.pth")
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    got = torch_weights.load_state_dict(path)
    np.testing.assert_array_equal(got["transposed"], t.t().numpy())
    np.testing.assert_array_equal(got["slice"], t[1:, 2:].numpy())
    np.testing.assert_array_equal(got["half"], t.numpy().astype(np.float16))
    np.testing.assert_array_equal(got["bf16"], t.float().numpy())
    assert got["int"] == 7 and got["nested.x"].tolist() == [1.0, 1.0]


def test_files_that_are_not_state_dicts_are_one_line(tmp_path):
  bad = tmp_path / "x.pth"
  bad.write_bytes(b"not a torch file at all")
  with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
    torch_weights.load_state_dict(str(bad))
  torch.save({"w": torch.ones(2)}, str(tmp_path / "other.pth"))
  with pytest.raises(ValueError, match="not the FID Inception's state dict"):
    inception.load_params(str(tmp_path / "other.pth"))
  # A pickle that would run code is refused, not run.
  evil = tmp_path / "evil.pth"
  torch.save({"w": torch.ones(1), "f": os.getcwd}, str(evil))
  with pytest.raises(ValueError, match="not part of a state dict"):
    torch_weights.load_state_dict(str(evil))
