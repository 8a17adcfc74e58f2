"""Tests for the PyTorch checkpoint import (`jard.interop`).

Each supported architecture is built in PyTorch (`torch_reference_models`,
with the original repositories' `state_dict` names), given non-trivial
BatchNorm statistics, converted, and compared with jard's Flax model on the
same images: logits and last feature maps agree to 1e-4. The two large WRNs
are compared numerically at small depth/width through the same converter,
and key-by-key (shapes only, PyTorch `meta` device) at full size.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jard import interop
from jard import models
from jard.models import wide_resnet
import torch_reference_models as ref
# pylint: enable=g-import-not-at-top,wrong-import-position

_TOLERANCE = 1e-4


def _randomise_batch_norm(net, seed=0):
  """Random BN affine parameters, running stats from one train-mode pass."""
  torch.manual_seed(seed)
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.2)
      bn.momentum = 1.0  # running stats := this batch's statistics.
    net.train()
    net(torch.rand(8, 3, 32, 32))
  for bn in bns:
    bn.momentum = 0.1
  return net.eval()


def _numpy_state_dict(net):
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


# (jard arch, PyTorch reference, jard model). The big WRNs run at small
# depth/width here; the full sizes are checked key by key below.
_CASES = {
    'resnet18': (lambda: ref.resnet18(10),
                 lambda: models.create_model('resnet18', 10)),
    'mobilenet_v2': (lambda: ref.KuangliuMobileNetV2(10),
                     lambda: models.create_model('mobilenet_v2', 10)),
    'preact_resnet18': (lambda: ref.PreActResNet18(100),
                        lambda: models.create_model('preact_resnet18', 100)),
    'resnet56': (lambda: ref.resnet56(10),
                 lambda: models.create_model('resnet56', 10)),
    'wrn34_10@16-2': (
        lambda: ref.TradesWideResNet(16, 2, 10, sub_block1=True),
        lambda: models.create_model('wrn34_10', 10).clone(depth=16, width=2)),
    # Width 1: group 1 keeps 16 channels, so its first block has no shortcut.
    'wrn34_10@10-1': (
        lambda: ref.TradesWideResNet(10, 1, 10),
        lambda: models.create_model('wrn34_10', 10).clone(depth=10, width=1)),
    'wrn70_16_dm@16-2': (
        lambda: ref.DeepMindWideResNet(16, 2, 10, wide_resnet.CIFAR100_MEAN,
                                       wide_resnet.CIFAR100_STD),
        lambda: models.create_model('wrn70_16_dm', 10).clone(
            depth=16, width=2, mean=wide_resnet.CIFAR100_MEAN,
            std=wide_resnet.CIFAR100_STD)),
}


@pytest.mark.parametrize('case', sorted(_CASES))
def test_converted_model_matches_pytorch(case):
  make_torch, make_jard = _CASES[case]
  arch = case.split('@')[0]
  torch.manual_seed(1)
  net = _randomise_batch_norm(make_torch())
  images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3))
  images = images.astype(np.float32)
  with torch.no_grad():
    logits, features = net.forward_with_features(
        torch.from_numpy(images.transpose(0, 3, 1, 2)))
  model = make_jard()
  variables = interop.convert(arch, _numpy_state_dict(net), model)
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, images)
  logit_diff = np.max(np.abs(np.asarray(outputs.logits) - logits.numpy()))
  feature_diff = np.max(np.abs(np.asarray(outputs.features)
                               - features.numpy().transpose(0, 2, 3, 1)))
  print(f'{case}: max |logit diff| {logit_diff:.2e}, '
        f'max |feature diff| {feature_diff:.2e}')
  assert np.std(logits.numpy()) > 0.1  # not a degenerate comparison
  assert logit_diff < _TOLERANCE
  # Feature maps reach |f| ~ 15 (ResNet-56) where float32 rounding alone
  # (PyTorch's own float32 vs float64) is ~1.5e-4, so scale by |f|.
  assert feature_diff < _TOLERANCE * max(1.0, np.max(np.abs(features.numpy())))


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize('arch,make_torch,expected', [
    ('wrn34_10', lambda: ref.TradesWideResNet(34, 10, 10, sub_block1=True),
     46_160_474),
    ('wrn70_16_dm', lambda: ref.DeepMindWideResNet(70, 16, 10), 266_796_506),
])
def test_full_size_keys_and_shapes(arch, make_torch, expected):
  with torch.device('meta'):
    net = make_torch()
  shapes = {k: jax.ShapeDtypeStruct(tuple(v.shape), jnp.float32)
            for k, v in net.state_dict().items() if k not in ('mean', 'std')}
  model = models.create_model(arch, 10)
  plan = interop.match(arch, shapes, model)
  used = {key for key, _ in plan.values()}
  assert used == {k for k in shapes if not k.endswith('num_batches_tracked')
                  and not k.startswith('sub_block1.')}
  torch_count = sum(p.numel() for name, p in net.named_parameters()
                    if not name.startswith('sub_block1.'))
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 32, 32, 3)))
  assert _param_count(variables['params']) == torch_count == expected


def test_sub_block1_is_dropped():
  torch.manual_seed(0)
  state = _numpy_state_dict(ref.TradesWideResNet(10, 1, 10, sub_block1=True))
  assert any(k.startswith('sub_block1.') for k in state)
  without = {k: v for k, v in state.items() if not k.startswith('sub_block1.')}
  model = models.create_model('wrn34_10', 10).clone(depth=10, width=1)
  jax.tree.map(np.testing.assert_array_equal,
               interop.convert('wrn34_10', state, model),
               interop.convert('wrn34_10', without, model))


# ---------------------------------------------------------------------------
# Mismatch errors.


def _resnet20_state():
  torch.manual_seed(0)
  return _numpy_state_dict(ref.CifarResNet(20, 10))


def test_mismatches_raise_one_error_listing_everything():
  state = _resnet20_state()
  del state['layer1.0.conv1.weight']
  state['layer9.bogus.weight'] = np.zeros(3, np.float32)
  state['layer2.0.conv2.weight'] = np.zeros((32, 16, 3, 3), np.float32)
  with pytest.raises(ValueError) as info:
    interop.convert('resnet20', state, models.create_model('resnet20', 10))
  message = str(info.value)
  assert 'missing keys (1): layer1.0.conv1.weight' in message
  assert 'unexpected keys (1): layer9.bogus.weight' in message
  assert ('layer2.0.conv2.weight: checkpoint (32, 16, 3, 3), model expects '
          '(32, 32, 3, 3)') in message


def test_wrong_num_classes_names_the_head():
  with pytest.raises(ValueError, match=r'fc\.weight: checkpoint \(10, 64\), '
                     r'model expects \(100, 64\)'):
    interop.convert('resnet20', _resnet20_state(),
                    models.create_model('resnet20', 100))


def test_wrong_architecture_naming_is_reported():
  # A chenyaofo/MTARD ResNet checkpoint is not a kuangliu one.
  with pytest.raises(ValueError, match='unexpected keys.*fc.weight'):
    interop.convert('resnet18', _resnet20_state(),
                    models.create_model('resnet20', 10))


def test_preact_without_final_bn_needs_final_norm_false():
  # The kuangliu PreActResNet-18 has no final `bn`: final_norm=False.
  torch.manual_seed(0)
  state = {k: v for k, v in _numpy_state_dict(ref.PreActResNet18(10)).items()
           if not k.startswith('bn.')}
  with pytest.raises(ValueError, match='missing keys .4.: bn.bias'):
    interop.convert('preact_resnet18', state,
                    models.create_model('preact_resnet18', 10))
  variables = interop.convert(
      'preact_resnet18', state,
      models.create_model('preact_resnet18', 10, final_norm=False))
  assert 'final_bn' not in variables['params']


def test_model_settings_and_arch_are_checked():
  torch.manual_seed(0)
  state = _numpy_state_dict(ref.DeepMindWideResNet(10, 1, 10))
  relu_model = models.create_model('wrn34_10', 10).clone(depth=10, width=1)
  with pytest.raises(ValueError, match="model.activation='relu'"):
    interop.convert('wrn70_16_dm', state, relu_model)
  other_mean = models.create_model('wrn70_16_dm', 10).clone(
      depth=10, width=1, mean=wide_resnet.CIFAR100_MEAN)
  with pytest.raises(ValueError, match='checkpoint mean=.*differs'):
    interop.convert('wrn70_16_dm', state, other_mean)
  with pytest.raises(ValueError, match='No PyTorch converter.*resnet18'):
    interop.convert('vgg16', state, relu_model)
  with pytest.raises(ValueError, match='converts into a ResNet'):
    interop.convert('resnet18', state, relu_model)


# ---------------------------------------------------------------------------
# Reading files.


def test_load_state_dict_unwraps_and_strips_prefixes(tmp_path):
  torch.manual_seed(0)
  net = ref.CifarResNet(20, 10)
  state = net.state_dict()
  expected = _numpy_state_dict(net)
  variants = {
      'raw': state,
      'wrapped': {'state_dict': state, 'epoch': 7},
      'net': {'net': state, 'acc': 93.18},
      'data_parallel': {f'module.{k}': v for k, v in state.items()},
      'nested': {'model': {'state_dict': {f'module.model.{k}': v
                                          for k, v in state.items()}}},
  }
  for name, obj in variants.items():
    path = os.path.join(tmp_path, f'{name}.pt')
    torch.save(obj, path)
    loaded = interop.load_state_dict(path)
    assert sorted(loaded) == sorted(expected), name
    for key, value in expected.items():
      np.testing.assert_array_equal(loaded[key], value)


def test_import_checkpoint_end_to_end(tmp_path):
  torch.manual_seed(0)
  net = _randomise_batch_norm(
      ref.DeepMindWideResNet(10, 1, 10, wide_resnet.CIFAR100_MEAN,
                             wide_resnet.CIFAR100_STD)).half()
  path = os.path.join(tmp_path, 'dm.pt')
  torch.save({'model_state_dict': net.state_dict()}, path)
  model, variables = interop.import_checkpoint(path, 'wrn70_16_dm', 10,
                                               depth=10, width=1)
  np.testing.assert_allclose(model.mean, wide_resnet.CIFAR100_MEAN,
                             rtol=1e-3)  # from the (fp16) checkpoint.
  assert variables['params']['head']['kernel'].dtype == jnp.float32
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3))
  net = net.float()
  with torch.no_grad():
    logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2)).float())
  outputs = model.apply(variables, images.astype(np.float32), train=False)
  np.testing.assert_allclose(outputs.logits, logits.numpy(), atol=_TOLERANCE)


class _Payload:
  """Unpickling this object creates a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return open, (self.marker, 'w')


def test_load_state_dict_refuses_pickled_code(tmp_path):
  marker = os.path.join(tmp_path, 'pwned')
  path = os.path.join(tmp_path, 'evil.pt')
  torch.save({'conv1.weight': torch.zeros(1), 'x': _Payload(marker)}, path)
  with pytest.raises(ValueError, match='weights_only=True'):
    interop.load_state_dict(path)
  assert not os.path.exists(marker)
  # Control: the payload is live when unpickling is unrestricted.
  torch.load(path, weights_only=False)['x'].close()
  assert os.path.exists(marker)


def test_load_state_dict_bad_input(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    interop.load_state_dict(os.path.join(tmp_path, 'missing.pt'))
  path = os.path.join(tmp_path, 'not_a_state_dict.pt')
  torch.save({'weights': [1, 2, 3]}, path)
  with pytest.raises(ValueError, match='not a state_dict'):
    interop.load_state_dict(path)
  bf16 = os.path.join(tmp_path, 'bf16.pt')
  torch.save({'w': torch.ones(2, dtype=torch.bfloat16)}, bf16)
  assert interop.load_state_dict(bf16)['w'].dtype == np.float32
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'pip install jard\[torch\]'):
    interop.load_state_dict(path)



def test_a_pytorch_file_is_a_teacher_checkpoint(tmp_path):
  """`config.teachers.<name>.checkpoint=model.pt`: validated, converted for
  the teacher's registry model, and run frozen like a jard checkpoint."""
  import importlib  # pylint: disable=g-import-not-at-top
  from jard import teachers  # pylint: disable=g-import-not-at-top
  from jard import validation  # pylint: disable=g-import-not-at-top
  net = _randomise_batch_norm(ref.CifarResNet(20, 10))
  path = os.path.join(tmp_path, 'resnet20.pt')
  torch.save({'state_dict': net.state_dict()}, path)
  config = importlib.import_module('configs.rslad').get_config('quick')
  config.teachers.robust.model.name = 'resnet20'
  config.teachers.robust.checkpoint = path
  validation.validate(config)
  built = teachers.build_teachers(config, str(tmp_path), (32, 32, 3), 10)
  images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3))
  with torch.no_grad():
    want = net(torch.from_numpy(images.transpose(0, 3, 1, 2)).float())
  got = built['robust'](jnp.asarray(images, jnp.float32)).logits
  np.testing.assert_allclose(got, want.numpy(), atol=_TOLERANCE)
  config.teachers.robust.model.name = 'resnet8'  # no converter for it
  with pytest.raises(validation.ConfigError, match='no converter'):
    validation.validate(config)
  config.teachers.robust.checkpoint = str(tmp_path / 'missing.pt')
  with pytest.raises(validation.ConfigError, match='does not exist'):
    validation.validate(config)
