"""Import PyTorch `state_dict` checkpoints into jard's Flax models.

PyTorch is needed only to read the file (`load_state_dict`); conversion works
on NumPy arrays, and the converted variables are ordinary Flax variables
`{'params', 'batch_stats'}` for `model.apply(variables, x, train=False)`.

    model, variables = import_checkpoint('model_cifar_wrn.pt', 'wrn34_10', 10)
    outputs = model.apply(variables, images_nhwc_in_0_1, train=False)

Mapping rules. The Flax target tree comes from `jax.eval_shape(model.init)`,
so nothing is allocated twice and the mapping follows the model actually
built (any depth or width of the same family). A per-architecture function
`CONVERTERS[arch]` renames each Flax module path to the PyTorch module prefix
of the original repository, and the variable kind gives the suffix and the
layout change:

  ======================  =========================  =========================
  Flax variable           PyTorch key                layout
  ======================  =========================  =========================
  Conv `kernel`           `<prefix>.weight`          OIHW -> HWIO
  Dense `kernel`          `<prefix>.weight`          (out, in) -> (in, out)
  Conv/Dense `bias`       `<prefix>.bias`            unchanged
  BatchNorm `scale`       `<prefix>.weight`          unchanged
  BatchNorm `bias`        `<prefix>.bias`            unchanged
  batch_stats `mean`      `<prefix>.running_mean`    unchanged
  batch_stats `var`       `<prefix>.running_var`     unchanged
  ======================  =========================  =========================

Depthwise convolutions need no special case: PyTorch's `(C, 1, kh, kw)`
becomes Flax's `(kh, kw, 1, C)` for `feature_group_count=C`. Every Flax leaf
is filled exactly once and every checkpoint key is used exactly once, except
the ignored keys below; anything else (missing keys, unexpected keys, shape
mismatches, a model whose invisible settings such as the activation differ
from the checkpoint's architecture) raises one `ValueError` listing all of it.

Architectures (`CONVERTERS` keys are jard registry names):

* `resnet18` / `resnet34`: kuangliu CIFAR ResNet (`conv1`, `bn1`,
  `layerS.B.{conv1,bn1,conv2,bn2}`, `layerS.B.shortcut.{0,1}`, `linear`).
* `resnet56` (and `resnet20/32/44`): the chenyaofo-style CIFAR ResNet that
  MTARD/CIARD use as the natural teacher: 16-32-64 widths, 1x1 conv + BN
  ("option B") shortcut named `layerS.B.downsample.{0,1}`, head `fc`.
* `preact_resnet18`: PreActResNet-18 of Rice et al. (`conv1`,
  `layerS.B.{bn1,conv1,bn2,conv2}`, `layerS.B.shortcut.0`, final `bn`,
  `linear`); a kuangliu checkpoint without `bn` needs `final_norm=False`.
* `mobilenet_v2`: kuangliu CIFAR MobileNetV2 (`conv1`, `bn1`,
  `layers.N.{conv1,bn1,conv2,bn2,conv3,bn3}`, `layers.N.shortcut.{0,1}`,
  `conv2`, `bn2`, `linear`), N counting blocks over all stages.
* `wrn34_10` (and `wrn28_10`, `wrn22_6`, `wrn70_16`): the TRADES/xternalz
  WideResNet, also RobustBench's `WideResNet` (`conv1`,
  `blockG.layer.B.{bn1,conv1,bn2,conv2,convShortcut}`, `bn1`, `fc`).
* `wrn70_16_dm`: the DeepMind WRN of Gowal et al. 2020 as in RobustBench's
  `DMWideResNet` (`init_conv`, `layer.G.block.B.{batchnorm_0,conv_0,
  batchnorm_1,conv_1,shortcut}`, `batchnorm`, `logits`). It also converts
  DeepMind-style WRN-28-10 etc. when given a `WideResNet` of that size with
  `activation='swish', padding='tf_same', normalize=True`.

Ignored keys, and why:

* `*.num_batches_tracked`: PyTorch's BatchNorm step counter. It only matters
  for `momentum=None` (cumulative averages) during training; inference uses
  the running mean and variance, and Flax BatchNorm has no counter.
* `sub_block1.*` (TRADES-style WRNs): an unused copy of group 1 that the
  TRADES, MART and LTD-CIFAR-100 checkpoints carry; the forward pass never
  calls it, so it is dropped.
* `mean`, `std` (DeepMind WRN, RobustBench buffers of shape `[3, 1, 1]`):
  the input normalisation is a model field in jard, not a variable. They are
  checked against `model.mean` / `model.std` instead of copied;
  `import_checkpoint` builds the model with them.
"""

import collections
import os
import pickle
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jard import models
from jard.models import mobilenet_v2
from jard.models import preact_resnet
from jard.models import resnet
from jard.models import wide_resnet

StateDict = dict[str, np.ndarray]
FlaxPath = tuple[str, ...]

# Checkpoint wrappers, tried in order: `{'state_dict': {...}, 'epoch': ...}`.
_WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model', 'net')
# Key prefixes added by wrappers: DataParallel, RobustBench/Lightning modules.
_WRAPPER_PREFIXES = ('module.', 'model.')
_IGNORED_SUFFIXES = ('num_batches_tracked',)
# Entries listed per kind of mismatch in the error message.
_LISTED = 40


# ---------------------------------------------------------------------------
# Reading checkpoints.


def _to_numpy(tensor) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16.
    tensor = tensor.float()
  return tensor.numpy()


def load_state_dict(path: str) -> StateDict:
  """Reads a PyTorch checkpoint as `{key: np.ndarray}` without unpickling code.

  `torch.load(..., weights_only=True)` only reconstructs tensors, dicts and
  primitive values, so a checkpoint cannot run code when it is read. Common
  wrappers (`{'state_dict': ...}`, `{'model': ...}`, `{'net': ...}`) are
  unwrapped and `module.` / `model.` key prefixes (DataParallel, RobustBench)
  are stripped when every key carries them.

  Args:
    path: a `.pt` / `.pth` file written by `torch.save`.

  Returns:
    The state dict, tensors converted to NumPy arrays (bfloat16 -> float32).

  Raises:
    ImportError: PyTorch is not installed.
    FileNotFoundError: `path` does not exist.
    ValueError: the file holds pickled objects other than tensors and
      containers, or is not a state dict.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError(
        'Reading PyTorch checkpoints needs PyTorch: pip install jard[torch] '
        '(or pip install torch).') from err
  if not os.path.isfile(path):
    raise FileNotFoundError(f'PyTorch checkpoint {path!r} does not exist.')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as err:
    raise ValueError(
        f'{path!r} is not a plain PyTorch state_dict: torch.load(weights_only='
        f'True) refused to unpickle it ({err}). Re-save just the tensors, '
        'e.g. torch.save(model.state_dict(), path), from a trusted '
        'environment.') from err
  for _ in range(3):  # e.g. {'model': {'state_dict': ...}}.
    if not isinstance(obj, Mapping):
      break
    wrapped = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if not wrapped:
      break
    obj = obj[wrapped[0]]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path!r} holds a {type(obj).__name__}, not a '
                     'state_dict (a mapping from names to tensors).')
  not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise ValueError(
        f'{path!r} is not a state_dict: entries {not_tensors[:10]} are not '
        f'tensors (its keys: {list(obj)[:10]}).')
  state = {k: _to_numpy(v) for k, v in obj.items()}
  for _ in range(3):  # e.g. 'module.model.'.
    prefix = next((p for p in _WRAPPER_PREFIXES
                   if state and all(k.startswith(p) for k in state)), None)
    if prefix is None:
      break
    state = {k[len(prefix):]: v for k, v in state.items()}
  return state


# ---------------------------------------------------------------------------
# Per-architecture names: Flax module path -> PyTorch module prefix.

_BLOCK = re.compile(r'(?:stage|group)(\d+)_block(\d+)$')


def _rename(path: FlaxPath, top: Mapping[str, str],
            block: Callable[[int, int], str],
            inner: Mapping[str, str]) -> Optional[str]:
  """Renames `('stage2_block1', 'conv1')` via `block(2, 0)` and `inner`."""
  if len(path) == 1:
    return top.get(path[0])
  match = _BLOCK.match(path[0])
  if len(path) != 2 or not match or path[1] not in inner:
    return None
  stage, index = int(match.group(1)), int(match.group(2)) - 1
  return f'{block(stage, index)}.{inner[path[1]]}'


_POST_ACT_BLOCK = {'conv1': 'conv1', 'bn1': 'bn1', 'conv2': 'conv2',
                   'bn2': 'bn2'}


def _kuangliu_resnet(path: FlaxPath, model) -> Optional[str]:
  del model
  return _rename(path, {'stem_conv': 'conv1', 'stem_bn': 'bn1',
                        'head': 'linear'},
                 lambda s, b: f'layer{s}.{b}',
                 {**_POST_ACT_BLOCK, 'shortcut_conv': 'shortcut.0',
                  'shortcut_bn': 'shortcut.1'})


def _cifar_resnet(path: FlaxPath, model) -> Optional[str]:
  del model
  return _rename(path, {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'head': 'fc'},
                 lambda s, b: f'layer{s}.{b}',
                 {**_POST_ACT_BLOCK, 'shortcut_conv': 'downsample.0',
                  'shortcut_bn': 'downsample.1'})


def _preact_resnet(path: FlaxPath, model) -> Optional[str]:
  del model
  return _rename(path, {'stem_conv': 'conv1', 'final_bn': 'bn',
                        'head': 'linear'},
                 lambda s, b: f'layer{s}.{b}',
                 {'bn1': 'bn1', 'conv1': 'conv1', 'bn2': 'bn2',
                  'conv2': 'conv2', 'shortcut_conv': 'shortcut.0'})


def _kuangliu_mobilenet_v2(path: FlaxPath, model) -> Optional[str]:
  # kuangliu numbers the blocks of all stages in one `layers` Sequential.
  offsets = np.cumsum([0] + [cfg[2] for cfg in model.config])
  return _rename(path, {'stem_conv': 'conv1', 'stem_bn': 'bn1',
                        'head_conv': 'conv2', 'head_bn': 'bn2',
                        'head': 'linear'},
                 lambda s, b: f'layers.{offsets[s - 1] + b}',
                 {'expand_conv': 'conv1', 'expand_bn': 'bn1',
                  'depthwise_conv': 'conv2', 'depthwise_bn': 'bn2',
                  'project_conv': 'conv3', 'project_bn': 'bn3',
                  'shortcut_conv': 'shortcut.0',
                  'shortcut_bn': 'shortcut.1'})


def _trades_wrn(path: FlaxPath, model) -> Optional[str]:
  del model
  return _rename(path, {'stem_conv': 'conv1', 'final_bn': 'bn1',
                        'head': 'fc'},
                 lambda g, b: f'block{g}.layer.{b}',
                 {'bn1': 'bn1', 'conv1': 'conv1', 'bn2': 'bn2',
                  'conv2': 'conv2', 'shortcut_conv': 'convShortcut'})


def _deepmind_wrn(path: FlaxPath, model) -> Optional[str]:
  del model
  return _rename(path, {'stem_conv': 'init_conv', 'final_bn': 'batchnorm',
                        'head': 'logits'},
                 lambda g, b: f'layer.{g - 1}.block.{b}',
                 {'bn1': 'batchnorm_0', 'conv1': 'conv_0',
                  'bn2': 'batchnorm_1', 'conv2': 'conv_1',
                  'shortcut_conv': 'shortcut'})


class Converter(NamedTuple):
  """How one PyTorch architecture's `state_dict` maps onto a jard model.

  Attributes:
    rename: `(flax_module_path, model) -> torch module prefix` (None: the
      Flax module has no PyTorch counterpart).
    model_type: the jard module class the checkpoint's architecture matches.
    fields: model attributes invisible in the weights that must have these
      values (activation, padding, normalisation).
    ignored_prefixes: checkpoint key prefixes dropped without use.
    buffers: checkpoint keys compared with the model attribute of the same
      name instead of being copied (DeepMind `mean` / `std`).
  """
  rename: Callable[[FlaxPath, Any], Optional[str]]
  model_type: type
  fields: tuple[tuple[str, Any], ...] = ()
  ignored_prefixes: tuple[str, ...] = ()
  buffers: tuple[str, ...] = ()


_KUANGLIU_RESNET = Converter(_kuangliu_resnet, resnet.ResNet)
_CIFAR_RESNET = Converter(_cifar_resnet, resnet.ResNet)
_TRADES_WRN = Converter(
    _trades_wrn, wide_resnet.WideResNet,
    fields=(('activation', 'relu'), ('padding', 'torch'),
            ('normalize', False)),
    ignored_prefixes=('sub_block1.',))
_DEEPMIND_WRN = Converter(
    _deepmind_wrn, wide_resnet.WideResNet,
    fields=(('activation', 'swish'), ('padding', 'tf_same'),
            ('normalize', True)),
    buffers=('mean', 'std'))

CONVERTERS = {
    'resnet18': _KUANGLIU_RESNET,
    'resnet34': _KUANGLIU_RESNET,
    'resnet20': _CIFAR_RESNET,
    'resnet32': _CIFAR_RESNET,
    'resnet44': _CIFAR_RESNET,
    'resnet56': _CIFAR_RESNET,
    'preact_resnet18': Converter(_preact_resnet, preact_resnet.PreActResNet),
    'mobilenet_v2': Converter(_kuangliu_mobilenet_v2,
                              mobilenet_v2.MobileNetV2),
    'wrn34_10': _TRADES_WRN,
    'wrn28_10': _TRADES_WRN,
    'wrn22_6': _TRADES_WRN,
    'wrn70_16': _TRADES_WRN,
    'wrn70_16_dm': _DEEPMIND_WRN,
}


# ---------------------------------------------------------------------------
# Matching and conversion.


def _variable_map(collection: str, leaf: str, ndim: int):
  """(torch suffix, torch->flax transform, flax->torch shape) of one leaf."""
  same = (lambda a: a, lambda s: s)
  if collection == 'batch_stats':
    return {'mean': ('running_mean',) + same,
            'var': ('running_var',) + same}.get(leaf)
  if leaf == 'kernel' and ndim == 4:  # OIHW -> HWIO.
    return ('weight', lambda a: a.transpose(2, 3, 1, 0),
            lambda s: (s[3], s[2], s[0], s[1]))
  if leaf == 'kernel' and ndim == 2:  # (out, in) -> (in, out).
    return 'weight', lambda a: a.T, lambda s: s[::-1]
  return {'scale': ('weight',) + same, 'bias': ('bias',) + same}.get(leaf)


def _shape(x) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(x))


def _target(model, input_shape) -> dict[tuple[str, ...], Any]:
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1,) + tuple(input_shape), jnp.float32))
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))


def match(arch: str, state_dict: Mapping[str, Any], model, *,
          input_shape=(32, 32, 3)) -> dict[tuple[str, ...], tuple]:
  """Pairs every Flax variable of `model` with one checkpoint entry.

  Only shapes are read, so `state_dict` may hold arrays or anything with a
  `.shape` (e.g. tensors on PyTorch's `meta` device).

  Args:
    arch: a key of `CONVERTERS`.
    state_dict: `{torch key: array}`.
    model: the jard Flax module to fill.
    input_shape: `(H, W, C)` of one input image, to trace `model.init`.

  Returns:
    `{flax path (collection, *modules, leaf): (torch key, transform)}`.

  Raises:
    ValueError: unknown `arch`, or (in one message) every missing key,
      unexpected key, shape mismatch and mismatching model field.
  """
  _spec(arch, model)
  return _match(arch, state_dict, model, _target(model, input_shape))


def _spec(arch: str, model) -> Converter:
  """The converter of `arch`, checked against the type of `model`."""
  if arch not in CONVERTERS:
    raise ValueError(f'No PyTorch converter for arch={arch!r}; choose one of '
                     f'{sorted(CONVERTERS)}.')
  spec = CONVERTERS[arch]
  if not isinstance(model, spec.model_type):
    raise ValueError(
        f'arch={arch!r} converts into a {spec.model_type.__name__}, got a '
        f'{type(model).__name__}; build the model with '
        f'jard.models.create_model({arch!r}, num_classes).')
  return spec


def _match(arch, state_dict, model, target):
  """`match` against a precomputed flat target tree."""
  spec = CONVERTERS[arch]
  problems = [f'model.{name}={getattr(model, name)!r}, but {arch!r} '
              f'checkpoints need {value!r}'
              for name, value in spec.fields
              if getattr(model, name) != value]
  for name in spec.buffers:
    if name in state_dict:
      got = np.reshape(np.asarray(state_dict[name], np.float64), -1)
      want = np.asarray(getattr(model, name), np.float64)
      if got.shape != want.shape or not np.allclose(got, want, atol=1e-6):
        problems.append(f'checkpoint {name}={tuple(got.tolist())} differs '
                        f'from model.{name}={tuple(want.tolist())}; build the '
                        f'model with {name}= the checkpoint value')

  plan, unmapped, missing, mismatched = {}, [], [], []
  used = collections.Counter()
  for path, leaf in target.items():
    prefix = spec.rename(path[1:-1], model)
    rule = _variable_map(path[0], path[-1], len(leaf.shape))
    if prefix is None or rule is None:
      unmapped.append('/'.join(path))
      continue
    suffix, transform, torch_shape = rule
    key = f'{prefix}.{suffix}'
    used[key] += 1
    plan[path] = (key, transform)
    if key not in state_dict:
      missing.append(key)
    elif _shape(state_dict[key]) != torch_shape(leaf.shape):
      mismatched.append(
          f'{key}: checkpoint {_shape(state_dict[key])}, model expects '
          f'{torch_shape(leaf.shape)} (Flax {"/".join(path)} '
          f'{tuple(leaf.shape)})')
  duplicated = sorted(k for k, n in used.items() if n > 1)
  unexpected = sorted(
      k for k in state_dict
      if k not in used and k not in spec.buffers
      and not k.endswith(_IGNORED_SUFFIXES)
      and not k.startswith(spec.ignored_prefixes))

  if problems or unmapped or duplicated or missing or unexpected or mismatched:
    lines = [f'The checkpoint does not match jard model {arch!r} '
             f'({type(model).__name__}):']
    for title, items in (('model settings', problems),
                         ('missing keys', sorted(missing)),
                         ('unexpected keys', unexpected),
                         ('shape mismatches (PyTorch layout)', mismatched),
                         ('model variables without a PyTorch name', unmapped),
                         ('keys claimed twice', duplicated)):
      if items:
        more = f'; ... ({len(items) - _LISTED} more)' if (
            len(items) > _LISTED) else ''
        lines.append(f'  {title} ({len(items)}): '
                     + '; '.join(items[:_LISTED]) + more)
    lines.append('Check arch, num_classes and the model kwargs (depth, '
                 'width, final_norm, ...) against the checkpoint.')
    raise ValueError('\n'.join(lines))
  return plan


def convert(arch: str, state_dict: Mapping[str, np.ndarray], model, *,
            input_shape=(32, 32, 3)) -> dict[str, Any]:
  """Converts a PyTorch `state_dict` into variables of jard model `model`.

  Args:
    arch: a key of `CONVERTERS` (the PyTorch architecture's naming).
    state_dict: `{torch key: np.ndarray}`, e.g. from `load_state_dict`.
    model: the jard Flax module, e.g. `jard.models.create_model(arch, 10)`.
    input_shape: `(H, W, C)` of one NHWC input image.

  Returns:
    `{'params': ..., 'batch_stats': ...}` (float32 `jax.Array`s, the dtypes
    of `model.init`), ready for `model.apply(variables, x, train=False)`.

  Raises:
    ValueError: the checkpoint does not match the model (see `match`).
  """
  _spec(arch, model)
  target = _target(model, input_shape)
  plan = _match(arch, state_dict, model, target)
  flat = {path: jnp.asarray(transform(np.asarray(state_dict[key])),
                            dtype=target[path].dtype)
          for path, (key, transform) in plan.items()}
  return flax.traverse_util.unflatten_dict(flat)


def import_checkpoint(path: str, arch: str, num_classes: int,
                      **model_kwargs) -> tuple[Any, dict[str, Any]]:
  """Loads a PyTorch checkpoint file as a jard model and its variables.

  Args:
    path: the `torch.save` file.
    arch: jard registry name (a key of `CONVERTERS`).
    num_classes: K of the checkpoint's classifier.
    **model_kwargs: model fields that override the registry's, e.g.
      `depth=28, width=10` (a WRN-28-10 with `arch`'s naming) or
      `final_norm=False`. For `wrn70_16_dm` the checkpoint's `mean` / `std`
      buffers, when present, are used unless given here.

  Returns:
    `(model, variables)`.

  Raises:
    ValueError: unknown `arch` (before the file is read), or a checkpoint
      that does not match the model (see `match`).
  """
  if arch not in CONVERTERS:
    raise ValueError(f'No PyTorch converter for arch={arch!r}; choose one of '
                     f'{sorted(CONVERTERS)}.')
  state_dict = load_state_dict(path)
  for name in CONVERTERS[arch].buffers:
    if name in state_dict and name not in model_kwargs:
      model_kwargs[name] = tuple(
          float(v) for v in np.reshape(state_dict[name], -1))
  # `clone` sets any field, also depth/width that the registry's WRN
  # constructors fix.
  model = models.create_model(arch, num_classes).clone(**model_kwargs)
  return model, convert(arch, state_dict, model)
