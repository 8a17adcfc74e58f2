"""PyTorch reference architectures for the checkpoint-import tests.

Written for jard's tests from the architecture descriptions (layer order,
padding, shortcuts), with the module names of the original repositories so
that their `state_dict` keys are the ones real checkpoints carry:

* `KuangliuResNet` / `resnet18`: kuangliu pytorch-cifar ResNet-18.
* `KuangliuMobileNetV2`: kuangliu pytorch-cifar CIFAR MobileNetV2.
* `PreActResNet18`: the PreActResNet-18 of Rice et al. (final `bn`).
* `TradesWideResNet`: the TRADES/xternalz WRN, optionally with the unused
  `sub_block1` of the TRADES checkpoints.
* `CifarResNet` / `resnet56`: the 16-32-64 CIFAR ResNet of MTARD's natural
  teacher (1x1 conv + BN `downsample` shortcut, `fc` head).
* `DeepMindWideResNet`: the Gowal et al. (2020) WRN with RobustBench's
  `DMWideResNet` names (Swish, internal normalisation, asymmetric padding).

Every model maps NCHW images in [0, 1] to logits; `forward_with_features`
also returns the last feature map (what jard's `Outputs.features` holds).
Only the tests import this module (it needs torch).
"""

import torch
from torch import nn
from torch.nn import functional as F


def _conv3x3(c_in, c_out, stride=1, padding=1):
  return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding, bias=False)


def _conv1x1(c_in, c_out, stride=1):
  return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class _Reference(nn.Module):
  """`forward` returns the logits of `forward_with_features`."""

  def forward(self, x):
    return self.forward_with_features(x)[0]

  def forward_with_features(self, x):
    raise NotImplementedError


# ---------------------------------------------------------------------------
# Post-activation ResNets.


class _PostActBlock(nn.Module):
  """conv-BN-ReLU-conv-BN + shortcut, ReLU; the shortcut module is named."""

  def __init__(self, c_in, c_out, stride, shortcut_name):
    super().__init__()
    self.conv1 = _conv3x3(c_in, c_out, stride)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = _conv3x3(c_out, c_out)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.shortcut_name = shortcut_name
    projection = None
    if stride != 1 or c_in != c_out:
      projection = nn.Sequential(_conv1x1(c_in, c_out, stride),
                                 nn.BatchNorm2d(c_out))
    elif shortcut_name == 'shortcut':
      projection = nn.Sequential()  # kuangliu: an empty Sequential.
    setattr(self, shortcut_name, projection)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    projection = getattr(self, self.shortcut_name)
    return F.relu(out + (x if projection is None else projection(x)))


class KuangliuResNet(_Reference):
  """kuangliu CIFAR ResNet: 3x3 stem, no max-pool, `linear` head."""

  def __init__(self, stage_sizes=(2, 2, 2, 2), num_classes=10):
    super().__init__()
    widths = (64, 128, 256, 512)
    self.conv1 = _conv3x3(3, 64)
    self.bn1 = nn.BatchNorm2d(64)
    c_in = 64
    for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
      blocks = []
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(_PostActBlock(c_in, width, stride, 'shortcut'))
        c_in = width
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.linear = nn.Linear(512, num_classes)

  def forward_with_features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    pooled = F.avg_pool2d(out, 4).flatten(1)
    return self.linear(pooled), out


def resnet18(num_classes=10):
  return KuangliuResNet((2, 2, 2, 2), num_classes)


class CifarResNet(_Reference):
  """16-32-64 CIFAR ResNet-(6n+2), conv + BN `downsample`, `fc` head."""

  def __init__(self, depth=56, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = _conv3x3(3, 16)
    self.bn1 = nn.BatchNorm2d(16)
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
      blocks = []
      for block in range(n):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(_PostActBlock(c_in, width, stride, 'downsample'))
        c_in = width
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(64, num_classes)

  def forward_with_features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    return self.fc(out.mean(dim=(2, 3))), out


def resnet56(num_classes=10):
  return CifarResNet(56, num_classes)


# ---------------------------------------------------------------------------
# MobileNetV2 (kuangliu CIFAR variant).

_MOBILENET_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class _InvertedResidual(nn.Module):
  """Expand 1x1, depthwise 3x3(s), project 1x1; residual whenever s = 1."""

  def __init__(self, c_in, c_out, expansion, stride):
    super().__init__()
    hidden = expansion * c_in
    self.stride = stride
    self.conv1 = _conv1x1(c_in, hidden)
    self.bn1 = nn.BatchNorm2d(hidden)
    self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1,
                           groups=hidden, bias=False)
    self.bn2 = nn.BatchNorm2d(hidden)
    self.conv3 = _conv1x1(hidden, c_out)
    self.bn3 = nn.BatchNorm2d(c_out)
    self.shortcut = nn.Sequential()
    if stride == 1 and c_in != c_out:
      self.shortcut = nn.Sequential(_conv1x1(c_in, c_out),
                                    nn.BatchNorm2d(c_out))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return out + self.shortcut(x) if self.stride == 1 else out


class KuangliuMobileNetV2(_Reference):
  """CIFAR MobileNetV2: stride-1 stem and second stage, plain ReLU."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = _conv3x3(3, 32)
    self.bn1 = nn.BatchNorm2d(32)
    blocks, c_in = [], 32
    for expansion, c_out, num_blocks, stride in _MOBILENET_CFG:
      for block in range(num_blocks):
        blocks.append(_InvertedResidual(c_in, c_out, expansion,
                                        stride if block == 0 else 1))
        c_in = c_out
    self.layers = nn.Sequential(*blocks)
    self.conv2 = _conv1x1(320, 1280)
    self.bn2 = nn.BatchNorm2d(1280)
    self.linear = nn.Linear(1280, num_classes)

  def forward_with_features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(self.layers(out))))
    return self.linear(F.avg_pool2d(out, 4).flatten(1)), out


# ---------------------------------------------------------------------------
# Pre-activation networks.


class _PreActBlock(nn.Module):
  """BN-ReLU-conv3x3(s)-BN-ReLU-conv3x3; 1x1 shortcut on the activated x."""

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(c_in)
    self.conv1 = _conv3x3(c_in, c_out, stride)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.conv2 = _conv3x3(c_out, c_out)
    if stride != 1 or c_in != c_out:
      self.shortcut = nn.Sequential(_conv1x1(c_in, c_out, stride))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return out + shortcut


class PreActResNet18(_Reference):
  """PreActResNet-18 with the final BN-ReLU (`bn`) of Rice et al."""

  def __init__(self, num_classes=10):
    super().__init__()
    self.conv1 = _conv3x3(3, 64)
    c_in = 64
    for stage, width in enumerate((64, 128, 256, 512)):
      stride = 1 if stage == 0 else 2
      setattr(self, f'layer{stage + 1}', nn.Sequential(
          _PreActBlock(c_in, width, stride), _PreActBlock(width, width, 1)))
      c_in = width
    self.bn = nn.BatchNorm2d(512)
    self.linear = nn.Linear(512, num_classes)

  def forward_with_features(self, x):
    out = self.conv1(x)
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.relu(self.bn(out))
    return self.linear(F.avg_pool2d(out, 4).flatten(1)), out


class _TradesBlock(nn.Module):
  """TRADES WRN block; `convShortcut` only when the channel count changes."""

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(c_in)
    self.conv1 = _conv3x3(c_in, c_out, stride)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.conv2 = _conv3x3(c_out, c_out)
    self.equal_in_out = c_in == c_out
    self.convShortcut = (  # pylint: disable=invalid-name
        None if self.equal_in_out else _conv1x1(c_in, c_out, stride))

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = x if self.equal_in_out else self.convShortcut(out)
    out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    return out + shortcut


class _TradesGroup(nn.Module):

  def __init__(self, num_blocks, c_in, c_out, stride):
    super().__init__()
    self.layer = nn.Sequential(*[
        _TradesBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
        for i in range(num_blocks)])

  def forward(self, x):
    return self.layer(x)


class TradesWideResNet(_Reference):
  """TRADES WideResNet-depth-width; `sub_block1` is built but never used."""

  def __init__(self, depth=34, width=10, num_classes=10, sub_block1=True):
    super().__init__()
    n = (depth - 4) // 6
    widths = (16, 16 * width, 32 * width, 64 * width)
    self.conv1 = _conv3x3(3, 16)
    self.block1 = _TradesGroup(n, widths[0], widths[1], 1)
    if sub_block1:
      self.sub_block1 = _TradesGroup(n, widths[0], widths[1], 1)
    self.block2 = _TradesGroup(n, widths[1], widths[2], 2)
    self.block3 = _TradesGroup(n, widths[2], widths[3], 2)
    self.bn1 = nn.BatchNorm2d(widths[3])
    self.fc = nn.Linear(widths[3], num_classes)

  def forward_with_features(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.relu(self.bn1(out))
    return self.fc(F.avg_pool2d(out, 8).flatten(1)), out


class _DeepMindBlock(nn.Module):
  """DeepMind WRN block: Swish, (0, 1) padding before a stride-2 conv_0."""

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.batchnorm_0 = nn.BatchNorm2d(c_in)
    self.conv_0 = _conv3x3(c_in, c_out, stride, padding=0)
    self.batchnorm_1 = nn.BatchNorm2d(c_out)
    self.conv_1 = _conv3x3(c_out, c_out)
    self.stride = stride
    self.shortcut = _conv1x1(c_in, c_out, stride) if c_in != c_out else None

  def forward(self, x):
    out = F.silu(self.batchnorm_0(x))
    shortcut = x if self.shortcut is None else self.shortcut(out)
    pad = (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)
    out = self.conv_0(F.pad(out, pad))
    out = self.conv_1(F.silu(self.batchnorm_1(out)))
    return out + shortcut


class _DeepMindGroup(nn.Module):

  def __init__(self, num_blocks, c_in, c_out, stride):
    super().__init__()
    self.block = nn.Sequential(*[
        _DeepMindBlock(c_in if i == 0 else c_out, c_out,
                       stride if i == 0 else 1)
        for i in range(num_blocks)])

  def forward(self, x):
    return self.block(x)


class DeepMindWideResNet(_Reference):
  """Gowal et al. (2020) WRN: `(x - mean) / std` inside, Swish, `logits`."""

  def __init__(self, depth=70, width=16, num_classes=10,
               mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
    super().__init__()
    self.register_buffer('mean', torch.tensor(mean).view(3, 1, 1))
    self.register_buffer('std', torch.tensor(std).view(3, 1, 1))
    n = (depth - 4) // 6
    widths = (16, 16 * width, 32 * width, 64 * width)
    self.init_conv = _conv3x3(3, 16)
    self.layer = nn.Sequential(*[
        _DeepMindGroup(n, widths[g], widths[g + 1], 1 if g == 0 else 2)
        for g in range(3)])
    self.batchnorm = nn.BatchNorm2d(widths[3])
    self.logits = nn.Linear(widths[3], num_classes)

  def forward_with_features(self, x):
    out = self.layer(self.init_conv((x - self.mean) / self.std))
    out = F.silu(self.batchnorm(out))
    return self.logits(F.avg_pool2d(out, 8).flatten(1)), out
