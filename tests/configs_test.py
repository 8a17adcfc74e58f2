"""Every config file and documented variant loads, validates and resolves."""

import importlib
import json

import pytest

from jard import evaluate
from jard import methods
from jard import models
from jard import validation

CONFIGS = {
    'natural': [None, 'quick'],
    'pgd_at': [None, 'quick', 'init=N'],
    'trades': [None, 'quick', 'model=resnet18'],
    'mart': [None, 'quick', 'wrn', 'wrn,quick'],
    'atard': [None, 'quick', 'distill=logits', 'distill=both,quick'],
    'quickstart': [None, 'quick'],
    'ard': [None, 'quick', 'lr_bug'],
    'iad': [None, 'quick'],
    'rslad': [None, 'quick'],
    'mtard': [None, 'quick'],
    'adaad': [None, 'quick'],
    'smaraad': [None, 'quick', 'plus', 'plus:quick', 'cifar100'],
    'ader': [None, 'quick', 'mobilenet', 'cifar100', 'quick,teachers=clean',
             'quick,distill=attention'],
    'ciard': [None, 'quick', 'resnet18', 'cifar100', 'quick,push=bounded',
              'quick,weights=mtard', 'per_batch_decay_bug,teacher_bn=eval'],
}
RADIO = ('atard', 'quickstart')


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in CONFIGS.items()
                                      for a in args])
def test_config_loads_and_validates(name, arg):
  module = importlib.import_module(f'configs.{name}')
  assert module.__doc__ and 'python main.py --config=configs/' in module.__doc__
  config = module.get_config(arg)
  validation.validate(config)
  assert config.model.name in models.MODELS
  assert config.method.name in methods.METHODS
  json.loads(config.to_json())  # primitives only
  if name in RADIO:
    assert config.dataset.source.startswith('amc_synthetic')
    assert config.attack.train.budget == 'pnr'
    assert 'robust' in config.teachers and 'at' in config.baselines
  else:
    evaluate.check_suite(config.eval.attacks)
  if arg and 'quick' in arg:
    tiny = 'amc_transformer' if name in RADIO else 'resnet8'
    assert config.model.name == tiny and config.num_train_steps <= 8


def test_paper_hyperparameters():
  trades = importlib.import_module('configs.trades').get_config()
  assert (trades.method.beta, trades.attack.train.eps,
          trades.attack.train.step_size, trades.attack.train.init,
          trades.num_epochs, tuple(trades.schedule.boundaries),
          trades.optimizer.weight_decay) == (6.0, 0.031, 0.007, 'N', 76,
                                             (75,), 2e-4)
  mart = importlib.import_module('configs.mart').get_config()
  assert (mart.method.beta, mart.optimizer.lr, mart.optimizer.weight_decay,
          mart.num_epochs) == (5.0, 0.01, 3.5e-3, 120)
  mart_wrn = importlib.import_module('configs.mart').get_config('wrn')
  assert (mart_wrn.method.beta, mart_wrn.model.name) == (6.0, 'wrn34_10')
  pgd = importlib.import_module('configs.pgd_at').get_config()
  assert (pgd.attack.train.steps, pgd.attack.train.step_size,
          pgd.attack.train.init, pgd.num_epochs) == (10, 2 / 255, 'U', 110)
  assert importlib.import_module('configs.pgd_at').get_config(
      'init=N').attack.train.init == 'N'


def test_atard_paper_setting():
  config = importlib.import_module('configs.atard').get_config()
  assert config.dataset.source == 'amc_synthetic:per_key=1000'
  assert (config.model.name, config.teachers.robust.model.name) == (
      'amc_student', 'amc_teacher')
  assert config.method.layer_groups == '1-3,4-6'
  assert config.teachers.robust.recipe.method.name == 'pgd_at'
  assert config.baselines.at.method.name == 'pgd_at'
  assert config.attack.train.norm == 'l2' and not config.dataset.augment
  logits = importlib.import_module('configs.atard').get_config(
      'distill=logits')
  assert (logits.method.distill, logits.method.alpha) == ('logits', 1.0)


def test_default_defines_every_field():
  source = open(importlib.import_module('configs.default').__file__).read()
  config = importlib.import_module('configs.default').get_config()
  def leaves(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f'{prefix}{k}.')
      else:
        yield prefix + k
  for field in leaves(config.to_dict()):
    assert f'config.{field} =' in source, field
