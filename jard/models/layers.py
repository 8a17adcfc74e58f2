"""Building blocks shared by the CIFAR models, matching PyTorch semantics.

Three PyTorch details matter when numbers (and imported checkpoints) must agree:

* Padding: PyTorch `padding=1` is symmetric, also on stride-2 convolutions,
  whereas Flax `'SAME'` pads (0, 1) there. Convolutions here take explicit
  padding; only the DeepMind WRN uses `'SAME'` on purpose.
* BatchNorm: PyTorch momentum 0.1 is Flax momentum 0.9; eps 1e-5.
* Default init: PyTorch's kaiming-uniform(a=sqrt(5)) is a uniform variance
  scaling with scale 1/3 on fan-in, and biases are U(-1/sqrt(fan_in), ...).
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jard.models import conv_ops

# PyTorch's default `reset_parameters` for Conv2d and Linear weights.
torch_default_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')
# He-normal on fan-out: the init of the TRADES WRN and of many ResNet ports.
kaiming_normal_fan_out = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')


def torch_bias_init(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias init."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv(features: int, kernel: int = 3, stride: int = 1,
         padding: Any = None, groups: int = 1, use_bias: bool = False,
         kernel_init=torch_default_kernel_init, name: Optional[str] = None):
  """A 2-D convolution with PyTorch's symmetric padding by default.

  Its input gradient is `conv_ops`' (fast inside attack loops on CPU).
  """
  if padding is None:
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, feature_group_count=groups,
                 use_bias=use_bias, kernel_init=kernel_init, name=name,
                 conv_general_dilated=conv_ops.conv_general_dilated)


def batch_norm(train: bool, axis_name: Optional[str] = None,
               name: Optional[str] = None):
  """BatchNorm with PyTorch's defaults (momentum 0.1 there, 0.9 here).

  With `axis_name` set and `train=True` the batch statistics are averaged
  over that mapped axis, so every device normalises with the global batch
  statistics (synchronised BatchNorm). In eval mode the running averages are
  used and no collective runs.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, axis_name=axis_name if train else None,
                      name=name)


def dense(features: int, fan_in: int, name: Optional[str] = None):
  """nn.Dense with PyTorch's default Linear init."""
  return nn.Dense(features, kernel_init=torch_default_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, C]."""
  return jnp.mean(x, axis=(1, 2))


