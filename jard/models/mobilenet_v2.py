"""The kuangliu CIFAR MobileNetV2 (ARD, IAD, RSLAD, MTARD, AdaAD, DGAD).

Takes raw [0, 1] NHWC images (no normalisation). Differences from the
ImageNet MobileNetV2:

* Stem: 3x3 conv with 32 channels and stride 1 (not 2), BN, ReLU.
* The second stage has stride 1 (not 2), so the total downsampling is 8x
  (32 -> 4).
* Plain ReLU, not ReLU6.
* Every inverted-residual block has its 1x1 expand conv, also at expansion 1.
* A residual is added whenever stride = 1; if the channel counts differ the
  shortcut is a 1x1 conv + BN projection.
* Head: 1x1 conv 320 -> 1280, BN, ReLU, global average pool (4x4), Linear.

2,296,922 parameters for 10 classes, 2,412,212 for 100. PyTorch default
init throughout.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax

from jard.models import attention_branch
from jard.models import layers
from jard.models.outputs import Outputs

# (expansion, out_channels, num_blocks, first stride).
CIFAR_CONFIG = ((1, 16, 1, 1),
                (6, 24, 2, 1),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """1x1 expand-BN-ReLU, 3x3 depthwise(s)-BN-ReLU, 1x1 project-BN (+ res)."""
  features: int
  expansion: int
  stride: int = 1
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, self.bn_axis_name, name=name)
    in_features = x.shape[-1]
    hidden = self.expansion * in_features
    y = layers.conv(hidden, 1, 1, padding='VALID', name='expand_conv')(x)
    y = nn.relu(bn('expand_bn')(y))
    y = layers.conv(hidden, 3, self.stride, groups=hidden,
                    name='depthwise_conv')(y)
    y = nn.relu(bn('depthwise_bn')(y))
    y = layers.conv(self.features, 1, 1, padding='VALID',
                    name='project_conv')(y)
    y = bn('project_bn')(y)
    if self.stride == 1:
      if in_features != self.features:
        x = layers.conv(self.features, 1, 1, padding='VALID',
                        name='shortcut_conv')(x)
        x = bn('shortcut_bn')(x)
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2 returning `Outputs`.

  Attributes:
    num_classes: K.
    config: (expansion, out_channels, num_blocks, first stride) per stage.
    stem_features: channels of the 3x3 stem conv.
    head_features: channels of the final 1x1 conv.
    bn_axis_name: mapped axis for synchronised BatchNorm (set by the
      training step), None outside a mapped context.
    attention_stage: 0 for none, or the 1-based stage after which ADER's
      attention branch refines the features (`attention_branch`).
  """
  num_classes: int = 10
  config: Sequence[Sequence[int]] = CIFAR_CONFIG
  stem_features: int = 32
  head_features: int = 1280
  bn_axis_name: Optional[str] = None
  attention_stage: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Outputs:
    bn = lambda name: layers.batch_norm(train, self.bn_axis_name, name=name)
    x = layers.conv(self.stem_features, 3, 1, name='stem_conv')(x)
    x = nn.relu(bn('stem_bn')(x))
    attention_branch.check_stage(self.attention_stage, len(self.config),
                                 'MobileNetV2')
    attention_map = aux_logits = None
    for stage, (expansion, features, num_blocks, stride) in enumerate(
        self.config):
      for block in range(num_blocks):
        x = InvertedResidual(features, expansion, stride if block == 0 else 1,
                             self.bn_axis_name,
                             name=f'stage{stage + 1}_block{block + 1}')(
                                 x, train)
      if stage + 1 == self.attention_stage:
        x, attention_map, aux_logits = attention_branch.AttentionBranch(
            self.num_classes, self.bn_axis_name, name='attention')(x, train)
    x = layers.conv(self.head_features, 1, 1, padding='VALID',
                    name='head_conv')(x)
    x = nn.relu(bn('head_bn')(x))
    logits = layers.dense(self.num_classes, x.shape[-1], name='head')(
        layers.global_avg_pool(x))
    return Outputs(logits=logits, features=x, attention_map=attention_map,
                   aux_logits=aux_logits)


def mobilenet_v2(num_classes=10, **kw):
  return MobileNetV2(num_classes=num_classes, **kw)
