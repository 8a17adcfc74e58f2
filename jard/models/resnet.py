"""CIFAR ResNets: the kuangliu ResNet-18/34 and the 16-32-64 ResNet-20...56.

Both families take raw [0, 1] NHWC images (no normalisation, as in every AD
repository) and use post-activation BasicBlocks with a 1x1 conv + BN shortcut
whenever the stride or the channel count changes.

* `ResNet(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512))` is the
  "kuangliu" CIFAR ResNet-18: 3x3 stem, stride 1, no max-pool. 11,173,962
  parameters for 10 classes.
* `ResNet(stage_sizes=(9, 9, 9), widths=(16, 32, 64))` is the CIFAR ResNet-56
  of MTARD's natural teacher (option-B shortcuts). ResNet-20/32/44 use 3, 5
  and 7 blocks per stage.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax

from jard.models import attention_branch
from jard.models import layers
from jard.models.outputs import Outputs


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut), then ReLU."""
  features: int
  stride: int = 1
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, self.bn_axis_name, name=name)
    y = layers.conv(self.features, 3, self.stride, name='conv1')(x)
    y = nn.relu(bn('bn1')(y))
    y = layers.conv(self.features, 3, 1, name='conv2')(y)
    y = bn('bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = layers.conv(self.features, 1, self.stride, padding='VALID',
                      name='shortcut_conv')(x)
      x = bn('shortcut_bn')(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """Post-activation CIFAR ResNet returning `Outputs`.

  Attributes:
    stage_sizes: blocks per stage.
    widths: channels per stage; the stem has `widths[0]` channels.
    num_classes: K.
    bn_axis_name: mapped axis for synchronised BatchNorm (set by the
      training step), None outside a mapped context.
    attention_stage: 0 for none, or the 1-based stage after which ADER's
      attention branch refines the features (`attention_branch`).
  """
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int = 10
  bn_axis_name: Optional[str] = None
  attention_stage: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Outputs:
    x = layers.conv(self.widths[0], 3, 1, name='stem_conv')(x)
    x = nn.relu(layers.batch_norm(train, self.bn_axis_name, name='stem_bn')(x))
    attention_branch.check_stage(self.attention_stage, len(self.stage_sizes),
                                 'ResNet')
    attention_map = aux_logits = None
    for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, self.bn_axis_name,
                       name=f'stage{stage + 1}_block{block + 1}')(x, train)
      if stage + 1 == self.attention_stage:
        x, attention_map, aux_logits = attention_branch.AttentionBranch(
            self.num_classes, self.bn_axis_name, name='attention')(x, train)
    logits = layers.dense(self.num_classes, x.shape[-1], name='head')(
        layers.global_avg_pool(x))
    return Outputs(logits=logits, features=x, attention_map=attention_map,
                   aux_logits=aux_logits)


def resnet18(num_classes=10, **kw):
  return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, **kw)


def resnet34(num_classes=10, **kw):
  return ResNet((3, 4, 6, 3), (64, 128, 256, 512), num_classes, **kw)


def cifar_resnet(depth: int):
  """ResNet-{20,32,44,56}: 3 stages of (depth - 2) / 6 blocks, 16-32-64."""
  if (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {depth}.')
  n = (depth - 2) // 6

  def make(num_classes=10, **kw):
    return ResNet((n, n, n), (16, 32, 64), num_classes, **kw)
  return make
