"""Learning-rate schedules, as functions of the optimizer step.

Named schedules (`config.schedule.name`):

* `'constant'`;
* `'piecewise'`: PyTorch `MultiStepLR` semantics at *epoch* granularity:
  `lr · factor^{#{b ∈ boundaries : epoch ≥ b}}` with `epoch = step // S`;
* `'cosine'`: per-step cosine decay to 0 over the whole run;
* `'piecewise_non_cumulative'`: the ARD/IAD lr bug (only the first boundary
  acts), reproduced behind this name.

Later methods add their own formulas with `register_schedule(name, fn)`, where
`fn(epoch, *, base_lr, cfg)` maps the (integer, traced) epoch to a learning
rate; a Python callable with that signature may also be passed directly to
`make_schedule`.
"""

from typing import Callable, Union

import jax.numpy as jnp


def _constant(epoch, *, base_lr, cfg):
  del cfg
  return base_lr + 0.0 * epoch


def _piecewise(epoch, *, base_lr, cfg):
  boundaries = jnp.asarray(tuple(cfg.get('boundaries', ())) or (1 << 30,))
  cuts = jnp.sum(epoch >= boundaries)
  return base_lr * cfg.get('factor', 0.1) ** cuts


def _piecewise_non_cumulative(epoch, *, base_lr, cfg):
  """ARD/IAD's released `adjust_learning_rate`: every boundary *sets* the lr
  to base·factor (a local copy of the initial lr is multiplied), so only the
  first boundary has an effect."""
  first = min(tuple(cfg.get('boundaries', ())) or (1 << 30,))
  return base_lr * cfg.get('factor', 0.1) ** (epoch >= first)


SCHEDULES = {'constant': _constant, 'piecewise': _piecewise,
             'piecewise_non_cumulative': _piecewise_non_cumulative}
EPOCH_FN = Callable[..., jnp.ndarray]


def register_schedule(name: str, fn: EPOCH_FN) -> None:
  """Adds an epoch-level schedule `fn(epoch, *, base_lr, cfg)`."""
  SCHEDULES[name] = fn


def make_schedule(schedule: Union[str, EPOCH_FN], *, base_lr: float,
                  steps_per_epoch: int, total_steps: int, cfg=None):
  """Returns an optax-style schedule `step -> lr`.

  Args:
    schedule: a name (`'cosine'` or a key of `SCHEDULES`) or an epoch-level
      callable.
    base_lr: the initial learning rate.
    steps_per_epoch: optimizer steps per epoch.
    total_steps: steps of the whole run (for `'cosine'`).
    cfg: schedule options (`boundaries`, `factor`, ...), a mapping.
  """
  cfg = dict(cfg or {})
  if schedule == 'cosine':
    return lambda step: base_lr * 0.5 * (
        1.0 + jnp.cos(jnp.pi * jnp.minimum(step / total_steps, 1.0)))
  if isinstance(schedule, str):
    if schedule not in SCHEDULES:
      raise ValueError(
          f'config.schedule.name={schedule!r} is unknown; choose one of '
          f'{sorted(SCHEDULES) + ["cosine"]}.')
    schedule = SCHEDULES[schedule]
  return lambda step: schedule(step // steps_per_epoch, base_lr=base_lr,
                               cfg=cfg)
