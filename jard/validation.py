"""Config checks that run before any data is read or anything compiles.

Each failure raises `ConfigError` with one message naming the field and the
fix; `main.py` prints it without a traceback.
"""

import jax

from jard import attacks
from jard import evaluate
from jard import methods
from jard import models
from jard import parallel
from jard import schedules

STAGES = ('train', 'eval')


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


def validate(config) -> None:
  """Checks names, ranges and divisibility; raises ConfigError."""
  _check(config.model.name in models.MODELS,
         f'config.model.name={config.model.name!r} is not a registered model; '
         f'choose one of {sorted(models.MODELS)}.')
  _check(config.method.name in methods.METHODS,
         f'config.method.name={config.method.name!r} is not a registered '
         f'method; choose one of {sorted(methods.METHODS)}.')
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
  try:
    evaluate.check_suite(config.eval.attacks)
    if config.select.metric:
      evaluate.check_suite([config.select.metric], 'config.select.metric')
  except ValueError as e:
    raise ConfigError(str(e)) from None
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
