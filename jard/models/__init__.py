"""Model registry: name -> constructor(num_classes, **kwargs) -> nn.Module.

Every model maps its raw inputs (CNNs: [0, 1] NHWC images; the AMC
transformers: `[B, 2, 128]` I/Q vectors) to an `Outputs` struct via
`model.apply(variables, x, train=...)`.
"""

import functools

import jax
import jax.numpy as jnp

from jard.models import amc_transformer
from jard.models import mobilenet_v2
from jard.models import preact_resnet
from jard.models import resnet
from jard.models import wide_resnet
from jard.models.outputs import Outputs

MODELS = {
    'resnet18': resnet.resnet18,
    'resnet34': resnet.resnet34,
    # ResNet-8 (one block per stage): the tiny model of `:quick` configs.
    'resnet8': resnet.cifar_resnet(8),
    'resnet20': resnet.cifar_resnet(20),
    'resnet32': resnet.cifar_resnet(32),
    'resnet44': resnet.cifar_resnet(44),
    'resnet56': resnet.cifar_resnet(56),
    'preact_resnet18': preact_resnet.preact_resnet18,
    'mobilenet_v2': mobilenet_v2.mobilenet_v2,
    'wrn34_10': wide_resnet.wrn34_10,
    'wrn28_10': wide_resnet.wrn28_10,
    'wrn22_6': wide_resnet.wrn22_6,
    'wrn70_16': wide_resnet.wrn70_16,
    'wrn70_16_dm': wide_resnet.wrn70_16_dm,
    # Radio-signal transformers (ATARD); width/depth/heads/mlp_dim/patch are
    # overridable through config.model.
    'amc_transformer': amc_transformer.AMCTransformer,
    'amc_teacher': amc_transformer.amc_teacher,
    'amc_student': amc_transformer.amc_student,
}


def create_model(name: str, num_classes: int, **kwargs):
  """Builds registry model `name`; raises ValueError naming `model.name`."""
  if name not in MODELS:
    raise ValueError(
        f'config.model.name={name!r} is not a registered model; choose one '
        f'of {sorted(MODELS)}.')
  return MODELS[name](num_classes=num_classes, **kwargs)


def init_variables(model, key, input_shape):
  """`model`'s freshly initialised variables (on CPU compiled unoptimised).

  `input_shape` excludes the batch. The program runs once, and XLA:CPU
  spends seconds optimising its threefry random bits (ResNet-8: 4.5 s at
  the default level, 0.7 s at level 0), for the same values bit for bit.
  """
  init = functools.partial(model.init, train=False)
  dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  # Only where it was measured: other backends keep their own defaults.
  options = ({'xla_backend_optimization_level': 0}
             if jax.default_backend() == 'cpu' else None)
  return jax.jit(init).lower(key, dummy).compile(options)(key, dummy)
