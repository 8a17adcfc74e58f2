"""The benchmark's PyTorch architectures, the same functions as jard's.

* `resnet18`, `mobilenet_v2`: the kuangliu CIFAR models of jard's import
  tests (`tests/torch_reference_models.py`; `jard.interop` converts their
  weights into jard's `resnet18` / `mobilenet_v2` with equal logits).
* `amc_student`, `amc_teacher`: jard's AMC transformer written with
  `torch.nn` (conv patch embedding, CLS token, pre-LN encoder layers that
  also return their attention probabilities, LayerNorm ε = 1e-6 as Flax).

Every model maps its input to `(logits, features)`: NCHW images in [0, 1]
(the last feature map is what a CAM reads) or `[B, 2, L]` I/Q signals.
"""

import math
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

# The CNNs are the ones the import tests check against jard; one copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), 'tests'))
import torch_reference_models  # pylint: disable=g-import-not-at-top,wrong-import-position


class _SelfAttention(nn.Module):

  def __init__(self, width, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, x):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
    probs = scores.softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(b, t, d)
    return self.out(out), probs


class _EncoderLayer(nn.Module):

  def __init__(self, width, heads, mlp_dim):
    super().__init__()
    self.ln1 = nn.LayerNorm(width, eps=1e-6)
    self.attention = _SelfAttention(width, heads)
    self.ln2 = nn.LayerNorm(width, eps=1e-6)
    self.mlp_in = nn.Linear(width, mlp_dim)
    self.mlp_out = nn.Linear(mlp_dim, width)

  def forward(self, x):
    y, probs = self.attention(self.ln1(x))
    x = x + y
    return x + self.mlp_out(F.gelu(self.mlp_in(self.ln2(x)))), probs


class AMCTransformer(nn.Module):
  """`[B, 2, L]` -> (logits, features `[B, D, 1, L/p]`); attention kept."""

  def __init__(self, num_classes=11, width=128, depth=6, heads=8,
               mlp_dim=256, patch=8, length=128, input_scale=128.0):
    super().__init__()
    self.input_scale = input_scale
    self.patch_embed = nn.Conv2d(1, width, (2, patch), stride=(2, patch))
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(
        0.02 * torch.randn(1, length // patch + 1, width))
    self.layers = nn.ModuleList(
        [_EncoderLayer(width, heads, mlp_dim) for _ in range(depth)])
    self.ln_final = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)
    self.attention = []

  def forward(self, x):
    tokens = self.patch_embed(x[:, None] * self.input_scale)  # [B, D, 1, T]
    tokens = tokens.flatten(2).transpose(1, 2)
    h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
    h = h + self.pos_embed
    self.attention = []
    for layer in self.layers:
      h, probs = layer(h)
      self.attention.append(probs)
    h = self.ln_final(h)
    return self.head(h[:, 0]), h[:, 1:].transpose(1, 2)[:, :, None]


def _with_features(model):
  """`model(x)` returns `(logits, features)`, as the AMC transformer."""
  model.forward = model.forward_with_features
  return model


MODELS = {
    'resnet18': lambda k: _with_features(torch_reference_models.resnet18(k)),
    'mobilenet_v2': lambda k: _with_features(
        torch_reference_models.KuangliuMobileNetV2(k)),
    'amc_teacher': lambda k: AMCTransformer(k, 128, 6, 8, 256),
    'amc_student': lambda k: AMCTransformer(k, 96, 2, 4, 384),
}
