"""The CIFAR PreActResNet-18 of Madry et al. / Rice et al. (2020).

Takes raw [0, 1] NHWC images (no normalisation). Layout:

* 3x3 stem conv with 64 channels, stride 1, no BN/ReLU after it.
* Four stages of pre-activation blocks [2, 2, 2, 2], widths 64/128/256/512,
  first-block strides 1/2/2/2. A block is BN-ReLU-conv3x3(s)-BN-ReLU-conv3x3;
  the *activated* input `relu(bn1(x))` feeds the 1x1 conv shortcut (no BN)
  whenever the stride or the channel count changes, otherwise the shortcut is
  the raw input.
* Final BN-ReLU (Rice et al.'s `self.bn`), global average pool, Linear.

With the final BN (the default) the model has 11,172,170 parameters for 10
classes. The kuangliu `PreActResNet18` has no final BN-ReLU and 1,024
parameters fewer (11,171,146); `final_norm=False` builds that variant.
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax

from jard.models import attention_branch
from jard.models import layers
from jard.models.outputs import Outputs


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3(s)-BN-ReLU-conv3x3 plus shortcut (no final ReLU)."""
  features: int
  stride: int = 1
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: layers.batch_norm(train, self.bn_axis_name, name=name)
    out = nn.relu(bn('bn1')(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, self.stride, padding='VALID',
                             name='shortcut_conv')(out)
    else:
      shortcut = x
    y = layers.conv(self.features, 3, self.stride, name='conv1')(out)
    y = nn.relu(bn('bn2')(y))
    y = layers.conv(self.features, 3, 1, name='conv2')(y)
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation CIFAR ResNet returning `Outputs`.

  Attributes:
    stage_sizes: blocks per stage.
    widths: channels per stage; the stem has `widths[0]` channels.
    num_classes: K.
    final_norm: apply a final BN-ReLU before pooling (Rice et al.); False
      gives the kuangliu variant that pools the raw block output.
    bn_axis_name: mapped axis for synchronised BatchNorm (set by the
      training step), None outside a mapped context.
    attention_stage: 0 for none, or the 1-based stage after which ADER's
      attention branch refines the features (`attention_branch`).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  final_norm: bool = True
  bn_axis_name: Optional[str] = None
  attention_stage: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Outputs:
    x = layers.conv(self.widths[0], 3, 1, name='stem_conv')(x)
    attention_branch.check_stage(self.attention_stage, len(self.stage_sizes),
                                 'PreActResNet')
    attention_map = aux_logits = None
    for stage, (size, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(width, stride, self.bn_axis_name,
                        name=f'stage{stage + 1}_block{block + 1}')(x, train)
      if stage + 1 == self.attention_stage:
        x, attention_map, aux_logits = attention_branch.AttentionBranch(
            self.num_classes, self.bn_axis_name, name='attention')(x, train)
    if self.final_norm:
      x = nn.relu(
          layers.batch_norm(train, self.bn_axis_name, name='final_bn')(x))
    logits = layers.dense(self.num_classes, x.shape[-1], name='head')(
        layers.global_avg_pool(x))
    return Outputs(logits=logits, features=x, attention_map=attention_map,
                   aux_logits=aux_logits)


def preact_resnet18(num_classes=10, **kw):
  return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, **kw)
