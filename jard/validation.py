"""Config checks that run before any data is read or anything compiles.

Each failure raises `ConfigError` with one message naming the field and the
fix; `main.py` prints it without a traceback.
"""

import os

import jax

from jard import attacks
from jard.attacks import autoattack
from jard import data as data_lib
from jard import evaluate
from jard import evaluate_radio
from jard import losses
from jard import methods
from jard import models
from jard import parallel
from jard import schedules
from jard import teachers as teachers_lib
from jard import train as train_lib
from jard.methods import ader
from jard.methods import atard
from jard.methods import ciard
from jard.methods import base as method_base
from jard.methods import smaraad

STAGES = ('teachers', 'train', 'eval')


class ConfigError(ValueError):
  """A bad config value; the message names the field and the fix."""


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _positive_int(config, field: str) -> None:
  value = config
  for part in field.split('.'):
    value = value[part]
  _check(isinstance(value, int) and value > 0,
         f'config.{field}={value!r} must be a positive integer.')


def stages(config) -> tuple[str, ...]:
  names = tuple(s.strip() for s in config.stages.split(',') if s.strip())
  unknown = [s for s in names if s not in STAGES]
  _check(names and not unknown,
         f'config.stages={config.stages!r}: unknown stage(s) {unknown}; use a '
         f'comma-separated subset of {STAGES} in order.')
  return names


def _check_checkpoint_path(path: str, arch: str, field: str) -> None:
  """A jard run directory, or a PyTorch file of a convertible model."""
  if teachers_lib.is_torch_checkpoint(path):
    _check(os.path.isfile(path), f'{field}={path!r} does not exist.')
    from jard import interop  # pylint: disable=g-import-not-at-top
    _check(arch in interop.CONVERTERS,
           f'{field}={path!r} is a PyTorch file, but its model {arch!r} has no'
           f' converter; jard.interop converts {sorted(interop.CONVERTERS)}.')
    return
  _check(os.path.isdir(path),
         f'{field}={path!r} is not a directory; give a jard run workdir (or '
         'its train/ dir), a PyTorch .pt/.pth state_dict of a supported '
         'architecture, or leave it empty to train the teacher in the '
         'teachers stage.')


def _validate_image_eval(config) -> None:
  """The image protocol: suite, curve, AutoAttack, transfer."""
  eval_cfg = config.eval
  try:
    evaluate.check_suite(eval_cfg.attacks)
    if config.select.metric:
      evaluate.check_suite([config.select.metric], 'config.select.metric')
    if eval_cfg.curve_epsilons:
      evaluate.parse_epsilons(eval_cfg.curve_epsilons)
      evaluate.check_suite(eval_cfg.curve_attacks, 'config.eval.curve_attacks')
    if eval_cfg.transfer.checkpoint:
      evaluate.check_suite(eval_cfg.transfer.attacks,
                           'config.eval.transfer.attacks')
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check(not any(n.startswith(evaluate.TRANSFER_PREFIX) for n in
                 evaluate.check_suite(eval_cfg.attacks)),
         f'config.eval.attacks={eval_cfg.attacks!r}: transfer attacks are '
         'configured in config.eval.transfer (checkpoint, model, attacks).')
  aa_cfg = eval_cfg.autoattack
  _check(aa_cfg.version in ('',) + tuple(autoattack.VERSIONS),
         f'config.eval.autoattack.version={aa_cfg.version!r}; choose one of '
         f'{tuple(autoattack.VERSIONS)} or "" to skip AutoAttack.')
  _check(aa_cfg.version != 'rand',
         "config.eval.autoattack.version='rand' is for randomized defences; "
         "jard's models are deterministic in eval mode: use 'standard' (the "
         'library function `jard.attacks.autoattack.autoattack` takes a '
         'stochastic logits function).')
  for field in ('n_iter', 'n_queries'):
    _positive_int(config, f'eval.autoattack.{field}')
  _check(isinstance(aa_cfg.num_examples, int) and (aa_cfg.num_examples == -1
                                                   or aa_cfg.num_examples > 0),
         f'config.eval.autoattack.num_examples={aa_cfg.num_examples!r} must '
         'be -1 (config.eval.num_examples) or positive.')
  transfer = eval_cfg.transfer
  if transfer.checkpoint.startswith('teacher:'):
    name = transfer.checkpoint[len('teacher:'):]
    _check(name in config.teachers,
           f'config.eval.transfer.checkpoint={transfer.checkpoint!r} names '
           f'no teacher of this run; use one of '
           f'{["teacher:" + t for t in config.teachers]}.')
  elif transfer.checkpoint:
    _check(transfer.model.name in models.MODELS,
           f'config.eval.transfer.model.name={transfer.model.name!r}; name '
           f'the surrogate\'s architecture, one of {sorted(models.MODELS)}.')
    _check_checkpoint_path(transfer.checkpoint, transfer.model.name,
                           'config.eval.transfer.checkpoint')
    _check(transfer.which in ('best', 'last'),
           f'config.eval.transfer.which={transfer.which!r}; use "best" or '
           '"last".')


def _validate_radio(config) -> None:
  data = config.dataset
  if not data.source:
    _check(data_lib.is_radio_spec(data.test),
           f'config.dataset.test={data.test!r} must be a radio source too '
           '(or set config.dataset.source for both).')
  _check(not data.augment,
         'config.dataset.augment=True crops and flips images; set it to False'
         ' for radio sources.')
  _check(config.attack.train.budget in method_base.BUDGETS,
         f'config.attack.train.budget={config.attack.train.budget!r}; choose '
         f'one of {method_base.BUDGETS}.')
  _check(config.attack.train.budget == 'absolute'
         or config.attack.train.norm == 'l2',
         'config.attack.train.budget="pnr" is an L2 budget; set '
         'config.attack.train.norm="l2".')
  _check(config.select.metric in ('',) + evaluate_radio.SUITE,
         f'config.select.metric={config.select.metric!r}; the radio protocol '
         f'offers {evaluate_radio.SUITE} (or "" for no selection).')
  for field in ('pnrs', 'snrs'):
    try:
      evaluate_radio.parse_numbers(config.eval.radio[field],
                                   f'config.eval.radio.{field}')
    except ValueError as e:
      raise ConfigError(str(e)) from None
  _check(isinstance(config.eval.radio.steps, int)
         and config.eval.radio.steps > 0,
         f'config.eval.radio.steps={config.eval.radio.steps!r} must be a '
         'positive int.')


def _validate_teachers(config) -> None:
  method = methods.METHODS[config.method.name]
  missing = [t for t in method.teachers if t not in config.teachers]
  _check(not missing,
         f'config.method.name={config.method.name!r} needs teacher(s) '
         f'{missing}; add config.teachers.<name> entries (see '
         'configs/default.py, `teacher`).')
  for name in config.teachers:
    spec = config.teachers[name]
    field = f'config.teachers.{name}'
    for key in ('model', 'checkpoint', 'which', 'evaluate', 'recipe'):
      _check(key in spec, f'{field}.{key} is missing; build teacher entries '
             'with configs.default.teacher(...).')
    _check(spec.model.name in models.MODELS,
           f'{field}.model.name={spec.model.name!r} is not a registered model;'
           f' choose one of {sorted(models.MODELS)}.')
    _check(spec.which in ('best', 'last'),
           f'{field}.which={spec.which!r}; use "best" or "last".')
    if spec.checkpoint:
      _check_checkpoint_path(spec.checkpoint, spec.model.name,
                             f'{field}.checkpoint')
    else:
      recipe_method = spec.recipe.get('method', {}).get('name')
      _check(recipe_method in methods.METHODS and not
             methods.METHODS[recipe_method].teachers,
             f'{field}.recipe.method.name={recipe_method!r} must name a '
             'method without teachers (e.g. pgd_at) to train this teacher.')
  for name in config.baselines:
    method_name = config.baselines[name].get('method', {}).get(
        'name', config.method.name)
    _check(method_name in methods.METHODS,
           f'config.baselines.{name}.method.name={method_name!r} is not a '
           f'registered method; choose one of {sorted(methods.METHODS)}.')


def _validate_atard(config) -> None:
  hp = config.method
  _check(hp.get('distill', 'attention') in atard.DISTILL,
         f'config.method.distill={hp.get("distill")!r}; choose one of '
         f'{atard.DISTILL}.')
  try:
    groups = losses.parse_layer_groups(hp.get('layer_groups', '1-3,4-6'))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  depth = lambda group: getattr(models.create_model(
      group.name, config.dataset.num_classes,
      **{k: v for k, v in group.items() if k != 'name'}), 'depth', None)
  student_depth = depth(config.model)
  _check(student_depth is None or len(groups) == student_depth,
         f'config.method.layer_groups={hp.get("layer_groups")!r} has '
         f'{len(groups)} groups for a {student_depth}-layer student; give one '
         'teacher layer group per student layer.')
  teacher_depth = depth(config.teachers[atard.TEACHER].model)
  needed = max(max(g) for g in groups) + 1
  _check(teacher_depth is None or needed <= teacher_depth,
         f'config.method.layer_groups={hp.get("layer_groups")!r} uses teacher '
         f'layer {needed}, but the teacher has {teacher_depth} layers.')


def _validate_smaraad(config) -> None:
  hp = config.method
  _check(hp.get('cam_class', 'label') in smaraad.CAM_CLASSES,
         f'config.method.cam_class={hp.get("cam_class")!r}; choose one of '
         f'{smaraad.CAM_CLASSES}.')
  for field, low, high in (('gamma', 0.0, None), ('alpha', 0.0, 1.0),
                           ('lam', 0.0, None)):
    value = hp.get(field, 1.0)
    _check(isinstance(value, (int, float)) and value >= low
           and (high is None or value <= high),
           f'config.method.{field}={value!r} must be a number >= {low}'
           + (f' and <= {high}.' if high is not None else '.'))
  # CAMs need a spatial feature map and a GAP → Dense head.
  for field, name in [('config.model.name', config.model.name)] + [
      (f'config.teachers.{t}.model.name', config.teachers[t].model.name)
      for t in config.teachers]:
    _check(not name.startswith('amc'),
           f'{field}={name!r}: {config.method.name} aligns CAMs, which need a '
           'CNN with a global-average-pool → Dense head (resnet*, wrn*, '
           'mobilenet_v2, preact_resnet18).')


def _validate_ader(config) -> None:
  hp = config.method
  for field, choices in (('teachers', ader.TEACHERS),
                         ('distill', ader.DISTILL),
                         ('map_normalization',
                          losses.spatial_attention.NORMALIZATIONS)):
    _check(hp.get(field, choices[0]) in choices,
           f'config.method.{field}={hp.get(field)!r}; choose one of '
           f'{choices}.')
  _check(config.model.get('attention_stage', 0) > 0,
         f'config.method.name="ader" needs a student with an attention '
         f'branch: set config.model.attention_stage (1-based stage, e.g. 3 '
         f'for resnet18); got {config.model.get("attention_stage", 0)}.')
  _check(isinstance(hp.get('beta', 1.0), (int, float))
         and hp.get('beta', 1.0) > 0,
         f'config.method.beta={hp.get("beta")!r} must be a number > 0.')


def _validate_ciard(config) -> None:
  hp = config.method
  for field, choices in (('push', ciard.PUSH), ('weights', ciard.WEIGHTS),
                         ('teacher_bn', ciard.TEACHER_BN)):
    _check(hp.get(field, choices[0]) in choices,
           f'config.method.{field}={hp.get(field)!r}; choose one of '
           f'{choices}.')
  _check(isinstance(hp.get('retrain_from_epoch', 50), int)
         and hp.get('retrain_from_epoch', 50) >= 0,
         f'config.method.retrain_from_epoch={hp.get("retrain_from_epoch")!r}'
         ' must be an int >= 0.')


def validate(config) -> None:
  """Checks names, ranges and divisibility; raises ConfigError."""
  _check(config.model.name in models.MODELS,
         f'config.model.name={config.model.name!r} is not a registered model; '
         f'choose one of {sorted(models.MODELS)}.')
  _check(config.method.name in methods.METHODS,
         f'config.method.name={config.method.name!r} is not a registered '
         f'method; choose one of {sorted(methods.METHODS)}.')
  _check(config.get('compute_dtype', 'float32') in methods.COMPUTE_DTYPES,
         f'config.compute_dtype={config.get("compute_dtype")!r}; choose one of '
         f'{methods.COMPUTE_DTYPES}.')
  train_attack = config.attack.train
  for field in ('eps', 'step_size'):
    value = train_attack[field]
    _check(isinstance(value, (int, float)) and value >= 0,
           f'config.attack.train.{field}={value!r} must be a number >= 0 '
           '(fractions of the [0, 1] pixel range, e.g. 8/255).')
  _check(isinstance(train_attack.steps, int) and train_attack.steps >= 0,
         f'config.attack.train.steps={train_attack.steps!r} must be an int '
         '>= 0.')
  _check(train_attack.init in attacks.INITS,
         f'config.attack.train.init={train_attack.init!r}; choose one of '
         f'{attacks.INITS}.')
  _check(train_attack.norm in attacks.NORMS,
         f'config.attack.train.norm={train_attack.norm!r}; choose one of '
         f'{attacks.NORMS}.')
  _check(isinstance(config.eval.epsilon, (int, float))
         and config.eval.epsilon >= 0,
         f'config.eval.epsilon={config.eval.epsilon!r} must be >= 0.')
  if data_lib.is_radio_config(config.dataset):
    _validate_radio(config)
  else:
    _check(train_attack.budget == 'absolute',
           f'config.attack.train.budget={train_attack.budget!r} needs a radio '
           'source (amc_synthetic, radioml:<path>); use "absolute" for images.')
    _validate_image_eval(config)
  _check(config.optimizer.name in train_lib.OPTIMIZERS,
         f'config.optimizer.name={config.optimizer.name!r}; choose one of '
         f'{train_lib.OPTIMIZERS}.')
  _validate_teachers(config)
  if config.method.name == 'atard':
    _validate_atard(config)
  if config.method.name in ('smaraad', 'smaraad_pp'):
    _validate_smaraad(config)
  if config.method.name == 'ader':
    _validate_ader(config)
  if config.method.name == 'ciard':
    _validate_ciard(config)
  for field in ('batch_size', 'eval.batch_size', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints',
                'select.every_epochs'):
    _positive_int(config, field)
  devices = jax.device_count()
  for field in ('batch_size', 'eval.batch_size'):
    value = config.batch_size if field == 'batch_size' else config.eval.batch_size
    _check(value % devices == 0,
           f'config.{field}={value} is not divisible by the {devices} devices;'
           f' use a multiple of {devices}.')
  _check(config.num_epochs > 0 or config.num_train_steps > 0,
         'config.num_epochs or config.num_train_steps must be positive.')
  _check(config.parallel in parallel.MODES,
         f'config.parallel={config.parallel!r}; choose one of {parallel.MODES}.')
  _check(config.schedule.name in set(schedules.SCHEDULES) | {'cosine'},
         f'config.schedule.name={config.schedule.name!r}; choose one of '
         f'{sorted(set(schedules.SCHEDULES) | {"cosine"})}.')
  _check(config.optimizer.lr > 0 and config.optimizer.weight_decay >= 0,
         'config.optimizer.lr must be > 0 and weight_decay >= 0.')
  wanted = [c.strip() for c in config.eval.checkpoints.split(',') if c.strip()]
  _check(wanted and set(wanted) <= {'last', 'best'},
         f'config.eval.checkpoints={config.eval.checkpoints!r}; use "last", '
         '"best" or "last,best".')
  stages(config)
