"""Tests for the CIFAR model zoo: exact parameter counts and forward passes.

Parameter counts use `jax.eval_shape`, so even WRN-70-16 (267M parameters)
is never allocated. Forward passes use batches of two 32x32 images.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jard import models
from jard.models import mobilenet_v2
from jard.models import preact_resnet
from jard.models import resnet
from jard.models import wide_resnet
from jard.models.outputs import Outputs


_IMAGE_SHAPE = (32, 32, 3)


def _param_count(model) -> int:
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1,) + _IMAGE_SHAPE))
  return sum(int(np.prod(x.shape))
             for x in jax.tree_util.tree_leaves(variables['params']))


# ---------------------------------------------------------------------------
# Analytic parameter counts (weights + BN scale/bias; BN running stats are
# buffers, not parameters, in PyTorch as in Flax's `batch_stats`).


def _conv(c_in, c_out, k):
  return k * k * c_in * c_out


def _bn(c):
  return 2 * c


def _post_act_resnet_count(stage_sizes, widths, num_classes):
  """kuangliu BasicBlock ResNet: conv-BN shortcuts on every change."""
  total = _conv(3, widths[0], 3) + _bn(widths[0])
  c_in = widths[0]
  for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
    for block in range(size):
      stride = 2 if stage > 0 and block == 0 else 1
      total += _conv(c_in, width, 3) + _bn(width)
      total += _conv(width, width, 3) + _bn(width)
      if stride != 1 or c_in != width:
        total += _conv(c_in, width, 1) + _bn(width)
      c_in = width
  return total + c_in * num_classes + num_classes


def _preact_resnet_count(stage_sizes, widths, num_classes, final_norm,
                         stem_width=None):
  """Pre-activation ResNet/WRN: bare stem conv, BN on each block input, bare
  1x1 conv shortcut on a stride or channel change."""
  c_in = widths[0] if stem_width is None else stem_width
  total = _conv(3, c_in, 3)
  for stage, (size, width) in enumerate(zip(stage_sizes, widths)):
    for block in range(size):
      stride = 2 if stage > 0 and block == 0 else 1
      total += _bn(c_in) + _conv(c_in, width, 3)
      total += _bn(width) + _conv(width, width, 3)
      if stride != 1 or c_in != width:
        total += _conv(c_in, width, 1)
      c_in = width
  if final_norm:
    total += _bn(c_in)
  return total + c_in * num_classes + num_classes


def _wrn_count(depth, width, num_classes):
  n = (depth - 4) // 6
  return _preact_resnet_count((n, n, n), (16 * width, 32 * width, 64 * width),
                              num_classes, final_norm=True, stem_width=16)


def test_analytic_formulas_match_published_counts():
  assert _post_act_resnet_count((2, 2, 2, 2), (64, 128, 256, 512),
                                10) == 11_173_962
  assert _post_act_resnet_count((9, 9, 9), (16, 32, 64), 10) == 855_770
  assert _post_act_resnet_count((3, 3, 3), (16, 32, 64), 10) == 272_474
  # kuangliu PreActResNet18 (no final BN-ReLU): the published 11,171,146.
  assert _preact_resnet_count((2, 2, 2, 2), (64, 128, 256, 512), 10,
                              final_norm=False) == 11_171_146
  assert _wrn_count(34, 10, 10) == 46_160_474
  assert _wrn_count(28, 10, 10) == 36_479_194


@pytest.mark.parametrize('name,num_classes,expected', [
    ('resnet18', 10, 11_173_962),
    ('resnet18', 100, 11_220_132),
    ('resnet56', 10, 855_770),
    ('resnet20', 10, _post_act_resnet_count((3, 3, 3), (16, 32, 64), 10)),
    ('mobilenet_v2', 10, 2_296_922),
    ('mobilenet_v2', 100, 2_412_212),
    ('wrn34_10', 10, 46_160_474),
    ('wrn28_10', 10, _wrn_count(28, 10, 10)),
    ('wrn22_6', 10, _wrn_count(22, 6, 10)),
    ('wrn70_16', 10, _wrn_count(70, 16, 10)),
    ('wrn70_16_dm', 10, _wrn_count(70, 16, 10)),
    ('wrn70_16_dm', 100, _wrn_count(70, 16, 100)),
    # Rice et al.'s PreActResNet-18 with the final BN-ReLU.
    ('preact_resnet18', 10, _preact_resnet_count(
        (2, 2, 2, 2), (64, 128, 256, 512), 10, final_norm=True)),
])
def test_param_count(name, num_classes, expected):
  assert _param_count(models.create_model(name, num_classes)) == expected


def test_preact_resnet18_without_final_norm_matches_kuangliu():
  model = preact_resnet.preact_resnet18(10, final_norm=False)
  assert _param_count(model) == 11_171_146


def test_wrn70_16_dm_is_about_266_8m():
  count = _param_count(models.create_model('wrn70_16_dm', 10))
  assert round(count / 1e6, 1) == 266.8


def test_create_model_rejects_unknown_name():
  with pytest.raises(ValueError, match='config.model.name'):
    models.create_model('vgg16', 10)


# ---------------------------------------------------------------------------
# Forward passes.

_FORWARD_CASES = {
    'resnet20': (lambda k: resnet.cifar_resnet(20)(k), (8, 8, 64)),
    'resnet18': (resnet.resnet18, (4, 4, 512)),
    'preact_resnet18': (preact_resnet.preact_resnet18, (4, 4, 512)),
    'mobilenet_v2': (mobilenet_v2.mobilenet_v2, (4, 4, 1280)),
    'wrn16_2': (lambda k: wide_resnet.WideResNet(depth=16, width=2,
                                                 num_classes=k), (8, 8, 128)),
}


def _images(batch=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch,) + _IMAGE_SHAPE)


@pytest.mark.parametrize('name', sorted(_FORWARD_CASES))
def test_forward(name):
  make, feature_shape = _FORWARD_CASES[name]
  num_classes = 7
  model = make(num_classes)
  x = _images()
  variables = jax.jit(model.init)(jax.random.key(1), x)
  assert set(variables) == {'params', 'batch_stats'}

  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert isinstance(out, Outputs)
  assert out.logits.shape == (2, num_classes)
  assert out.features.shape == (2,) + feature_shape
  assert out.attention == ()
  assert out.attention_map is None and out.aux_logits is None
  assert np.all(np.isfinite(out.logits))

  out, updates = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  assert out.logits.shape == (2, num_classes)
  assert set(updates) == {'batch_stats'}
  assert (jax.tree_util.tree_structure(variables['batch_stats'])
          == jax.tree_util.tree_structure(updates['batch_stats']))
  old = jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]
  new = jax.tree_util.tree_leaves(updates['batch_stats'])
  # Every running variance moves. (Some running means legitimately stay at 0:
  # a 1x1 conv of a freshly initialised BN output has zero batch mean.)
  for (path, a), b in zip(old, new):
    if path[-1].key == 'var':
      assert not np.allclose(a, b), jax.tree_util.keystr(path)


def test_wrn_padding_changes_outputs_not_params():
  x = _images()
  torch_model = wide_resnet.WideResNet(depth=10, width=1, padding='torch')
  tf_model = wide_resnet.WideResNet(depth=10, width=1, padding='tf_same')
  assert _param_count(torch_model) == _param_count(tf_model)
  variables = torch_model.init(jax.random.key(0), x)
  torch_out = torch_model.apply(variables, x)
  tf_out = tf_model.apply(variables, x)
  assert torch_out.features.shape == tf_out.features.shape == (2, 8, 8, 64)
  assert not np.allclose(torch_out.logits, tf_out.logits)


def test_wrn_tf_same_pads_zero_one_on_stride_two():
  x = _images()
  sym = wide_resnet._conv3x3(4, 2, 'torch', 'c')
  tf = wide_resnet._conv3x3(4, 2, 'tf_same', 'c')
  explicit = nn.Conv(4, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)),
                     use_bias=False)
  variables = sym.init(jax.random.key(0), x)
  np.testing.assert_allclose(tf.apply(variables, x),
                             explicit.apply(variables, x), rtol=1e-6)
  assert not np.allclose(sym.apply(variables, x), tf.apply(variables, x))
  # Stride-1 convs pad (1, 1) in both modes.
  np.testing.assert_array_equal(
      wide_resnet._conv3x3(4, 1, 'torch', 'c').apply(variables, x),
      wide_resnet._conv3x3(4, 1, 'tf_same', 'c').apply(variables, x))


def test_wrn_init():
  model = wide_resnet.WideResNet(depth=16, width=2)
  params = jax.jit(model.init)(jax.random.key(0), _images())['params']
  np.testing.assert_array_equal(params['head']['bias'], 0.0)
  kernel = params['group3_block2']['conv2']['kernel']  # 3x3x128x128.
  np.testing.assert_allclose(np.std(kernel), np.sqrt(2.0 / (9 * 128)),
                             rtol=0.05)


def test_wrn_normalize_is_inside_forward():
  x = _images()
  plain = wide_resnet.WideResNet(depth=10, width=1)
  normed = wide_resnet.WideResNet(depth=10, width=1, normalize=True,
                                  activation='swish')
  plain_swish = wide_resnet.WideResNet(depth=10, width=1, activation='swish')
  variables = plain.init(jax.random.key(0), x)
  mean = jnp.asarray(wide_resnet.CIFAR10_MEAN)
  std = jnp.asarray(wide_resnet.CIFAR10_STD)
  np.testing.assert_allclose(
      normed.apply(variables, x).logits,
      plain_swish.apply(variables, (x - mean) / std).logits,
      rtol=1e-5, atol=1e-5)
  assert not np.allclose(plain.apply(variables, x).logits,
                         plain_swish.apply(variables, x).logits)


def test_wrn_rejects_bad_depth():
  with pytest.raises(ValueError, match='6n\\+4'):
    _param_count(wide_resnet.WideResNet(depth=33, width=10))


def test_wrn_remat_recomputes_blocks_with_the_same_function():
  plain = models.create_model('wrn34_10', 10, depth=10, width=1)
  remat = models.create_model('wrn34_10', 10, depth=10, width=1, remat=True)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = plain.init(jax.random.key(1), x, train=False)
  # The same variable tree: checkpoints and imports work either way.
  assert jax.tree.structure(remat.init(jax.random.key(1), x, train=False)) == (
      jax.tree.structure(variables))
  input_grad = lambda m: jax.grad(
      lambda z: m.apply(variables, z, train=False).logits.sum())
  np.testing.assert_array_equal(input_grad(remat)(x), input_grad(plain)(x))
  for model in (plain, remat):  # train mode (BatchNorm statistics) too
    out, stats = model.apply(variables, x, train=True, mutable=['batch_stats'])
    if model is plain:
      want = (out.logits, stats)
    else:
      np.testing.assert_array_equal(out.logits, want[0])
      jax.tree.map(np.testing.assert_array_equal, stats, want[1])
  jaxpr = str(jax.make_jaxpr(input_grad(remat))(x))
  assert 'checkpoint' in jaxpr or 'remat' in jaxpr
  assert 'checkpoint' not in str(jax.make_jaxpr(input_grad(plain))(x))


def test_init_variables_unoptimised_equals_the_optimised_program():
  """`models.init_variables` compiles at XLA opt level 0 for speed; the
  values must be those of a fully optimised compile, bit for bit."""
  model = models.create_model('resnet8', 10)
  key = jax.random.key(3)
  fast = models.init_variables(model, key, (32, 32, 3))
  dummy = jnp.zeros((1, 32, 32, 3), jnp.float32)
  optimised = jax.jit(functools.partial(model.init, train=False)).lower(
      key, dummy).compile({'xla_backend_optimization_level': 3})(key, dummy)
  jax.tree.map(np.testing.assert_array_equal, fast, optimised)
