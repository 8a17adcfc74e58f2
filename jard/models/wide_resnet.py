"""Wide ResNets: the TRADES/xternalz WRN and the DeepMind (Gowal 2020) WRN.

Both are pre-activation networks with widths 16 -> 16w -> 32w -> 64w, group
strides 1/2/2 and n = (depth - 4) / 6 blocks per group:

* Stem: 3x3 conv with 16 channels, no BN or activation after it.
* Block: BN-act-conv3x3(s)-BN-act-conv3x3. On a channel change the
  *activated* input `act(bn1(x))` feeds both conv1 and the 1x1 conv shortcut
  (no BN); otherwise the shortcut is the raw input.
* Head: final BN-act, global average pool (8x8 at 32x32 input), Linear.
* Init (TRADES): conv weights ~ N(0, 2 / (k^2 C_out)), BN gamma 1, beta 0,
  FC bias 0 (FC weight keeps PyTorch's default init).

The TRADES/RobustBench model (`activation='relu'`, `padding='torch'`,
`normalize=False`) takes raw [0, 1] images; WRN-34-10 has 46,160,474
parameters for 10 classes (the unused `sub_block1` of the TRADES checkpoints
is not built). The DeepMind variant (`wrn70_16_dm`) uses Swish, normalises
`(x - mean) / std` inside the forward pass and pads stride-2 convolutions
TF-'SAME' style, i.e. (0, 1).
"""

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jard.models import attention_branch
from jard.models import layers
from jard.models.outputs import Outputs

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_ACTIVATIONS = {'relu': nn.relu, 'swish': nn.swish}
_PADDINGS = ('torch', 'tf_same')


def _conv3x3(features: int, stride: int, padding: str, name: str):
  """3x3 conv, symmetric (1, 1) padding, or (0, 1) on stride 2 for tf_same."""
  pad = 'SAME' if padding == 'tf_same' and stride != 1 else None
  return layers.conv(features, 3, stride, padding=pad,
                     kernel_init=layers.kaiming_normal_fan_out, name=name)


class WideBlock(nn.Module):
  """Pre-activation WRN block: BN-act-conv3x3(s)-BN-act-conv3x3 + shortcut."""
  features: int
  stride: int = 1
  activation: str = 'relu'
  padding: str = 'torch'
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool):
    act = _ACTIVATIONS[self.activation]
    bn = lambda name: layers.batch_norm(train, self.bn_axis_name, name=name)
    out = act(bn('bn1')(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = layers.conv(self.features, 1, self.stride, padding='VALID',
                             kernel_init=layers.kaiming_normal_fan_out,
                             name='shortcut_conv')(out)
    else:
      shortcut = x
    y = _conv3x3(self.features, self.stride, self.padding, 'conv1')(out)
    y = act(bn('bn2')(y))
    y = _conv3x3(self.features, 1, self.padding, 'conv2')(y)
    return y + shortcut


class WideResNet(nn.Module):
  """Pre-activation WideResNet-`depth`-`width` returning `Outputs`.

  Attributes:
    depth: total depth, 6n + 4.
    width: widening factor w (group widths 16w, 32w, 64w).
    num_classes: K.
    activation: 'relu' (TRADES) or 'swish' (DeepMind).
    normalize: subtract `mean` and divide by `std` inside the forward pass
      (DeepMind); False takes raw [0, 1] images as every AD repository does.
    mean: per-channel input mean used when `normalize` is True.
    std: per-channel input std used when `normalize` is True.
    padding: 'torch' (symmetric (1, 1) on every 3x3 conv) or 'tf_same'
      ((0, 1) on stride-2 convs, as in the DeepMind models).
    bn_axis_name: mapped axis for synchronised BatchNorm (set by the
      training step), None outside a mapped context.
    attention_stage: 0 for none, or the 1-based group after which ADER's
      attention branch refines the features (`attention_branch`).
    remat: recompute each block's activations in the backward pass instead
      of storing them (`nn.remat`): the memory of a WRN-70-16 teacher that
      an attack differentiates through (AdaAD, SmaraAD) for ~1/3 more
      compute. Same parameters and outputs.
  """
  depth: int = 34
  width: int = 10
  num_classes: int = 10
  activation: str = 'relu'
  normalize: bool = False
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD
  padding: str = 'torch'
  bn_axis_name: Optional[str] = None
  attention_stage: int = 0
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Outputs:
    if (self.depth - 4) % 6:
      raise ValueError(f'WRN depth must be 6n+4, got {self.depth}.')
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f'WRN activation must be one of {sorted(_ACTIVATIONS)}'
                       f', got {self.activation!r}.')
    if self.padding not in _PADDINGS:
      raise ValueError(f'WRN padding must be one of {_PADDINGS}, got '
                       f'{self.padding!r}.')
    n = (self.depth - 4) // 6
    widths = (16 * self.width, 32 * self.width, 64 * self.width)
    if self.normalize:
      mean = jnp.asarray(self.mean, x.dtype)
      std = jnp.asarray(self.std, x.dtype)
      x = (x - mean) / std
    x = _conv3x3(16, 1, self.padding, 'stem_conv')(x)
    attention_branch.check_stage(self.attention_stage, len(widths),
                                 'WideResNet')
    attention_map = aux_logits = None
    # `train` (argument 2, counting the module) selects BatchNorm's mode.
    block_cls = nn.remat(WideBlock, static_argnums=(2,)) if self.remat else (
        WideBlock)
    for group, width in enumerate(widths):
      for block in range(n):
        stride = 2 if group > 0 and block == 0 else 1
        x = block_cls(width, stride, self.activation, self.padding,
                      self.bn_axis_name,
                      name=f'group{group + 1}_block{block + 1}')(x, train)
      if group + 1 == self.attention_stage:
        x, attention_map, aux_logits = attention_branch.AttentionBranch(
            self.num_classes, self.bn_axis_name, name='attention')(x, train)
    x = _ACTIVATIONS[self.activation](
        layers.batch_norm(train, self.bn_axis_name, name='final_bn')(x))
    logits = nn.Dense(self.num_classes,
                      kernel_init=layers.torch_default_kernel_init,
                      bias_init=nn.initializers.zeros, name='head')(
                          layers.global_avg_pool(x))
    return Outputs(logits=logits, features=x, attention_map=attention_map,
                   aux_logits=aux_logits)


def wrn(depth: int, width: int, **defaults):
  """Constructor for WRN-`depth`-`width`; `defaults` are WideResNet fields."""

  def make(num_classes=10, **kw):
    # Depth and width are defaults too: `create_model('wrn34_10', depth=16)`
    # builds the same family smaller (tests, imported checkpoints).
    return WideResNet(num_classes=num_classes,
                      **{'depth': depth, 'width': width, **defaults, **kw})
  return make


wrn34_10 = wrn(34, 10)
wrn28_10 = wrn(28, 10)
wrn22_6 = wrn(22, 6)
wrn70_16 = wrn(70, 16)
# DeepMind / Gowal et al. (2020): Swish, internal normalisation, TF padding.
# Pass the data set's `mean`/`std` (e.g. CIFAR100_MEAN/STD) when not CIFAR-10.
wrn70_16_dm = wrn(70, 16, activation='swish', normalize=True,
                  padding='tf_same')
