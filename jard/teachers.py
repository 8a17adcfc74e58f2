"""Teachers and derived runs: configs, checkpoints and frozen `Teacher`s.

A config names its teachers under `config.teachers.<name>`:

    config.teachers.robust.model.name = 'amc_teacher'  # + constructor kwargs
    config.teachers.robust.checkpoint = ''   # a jard workdir or its train/ dir
    config.teachers.robust.which = 'best'    # 'best' (falls back to last) or 'last'
    config.teachers.robust.evaluate = True   # evaluate it next to the student
    config.teachers.robust.recipe.method.name = 'pgd_at'   # how to train it

With an empty `checkpoint`, the pipeline's `teachers` stage trains the
teacher in `<workdir>/teachers/<name>` with the student's config changed by
`recipe` (its `method` and `model` groups replace the student's, every other
field is overridden one by one), so one command runs teacher → student →
evaluation. `config.baselines.<name>` are further students, derived the same
way, trained and evaluated next to the main one (e.g. plain AT next to
ATARD).

Teachers are frozen: `Teacher` applies them in eval mode with stopped
gradients, and their parameters are not in the student's optimizer.
"""

import copy
import os
from typing import Optional

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from jard import checkpoint
from jard import models
from jard.methods import Teacher

# Groups that a recipe/baseline replaces wholesale: their fields are specific
# to the method or model named in them.
REPLACED = ('method', 'model')


def _apply_overrides(config, overrides, prefix: str) -> None:
  for key, value in overrides.items():
    if key in REPLACED and not prefix:
      config[key] = ml_collections.ConfigDict(
          value.to_dict() if hasattr(value, 'to_dict') else dict(value))
    elif isinstance(value, (dict, ml_collections.ConfigDict)):
      if key not in config:
        raise KeyError(f'{prefix}{key}')
      _apply_overrides(config[key], value, f'{prefix}{key}.')
    else:
      if key not in config:
        raise KeyError(f'{prefix}{key}')
      config[key] = value


def derive_config(config, overrides, *, field: str, model=None,
                  keep_teachers: bool = True):
  """A copy of `config` changed by `overrides` (see module docstring).

  Args:
    config: the run config (not modified).
    overrides: a (Config)dict of fields to change.
    field: the config path of `overrides`, for error messages.
    model: a model group that replaces `config.model` (teachers).
    keep_teachers: keep `config.teachers` (baselines that distill from the
      same teachers) or clear them (a teacher's own run).

  Returns:
    An unlocked ConfigDict with `baselines` cleared.
  """
  derived = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  if model is not None:
    derived.model = ml_collections.ConfigDict(model.to_dict())
  try:
    _apply_overrides(derived, overrides, '')
  except KeyError as e:
    from jard.validation import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(
        f'{field}: unknown field {e.args[0]!r}; overrides must name existing '
        'config fields (see configs/default.py).') from None
  derived.baselines = ml_collections.ConfigDict()
  if not keep_teachers:
    derived.teachers = ml_collections.ConfigDict()
  return derived


def teacher_config(config, name: str):
  """The config that trains teacher `name` (its recipe on its model)."""
  spec = config.teachers[name]
  derived = derive_config(config, spec.recipe, model=spec.model,
                          field=f'config.teachers.{name}.recipe',
                          keep_teachers=False)
  derived.stages = 'train,eval' if spec.evaluate else 'train'
  if derived.eval.transfer.checkpoint.startswith('teacher:'):
    derived.eval.transfer.checkpoint = ''  # a teacher has no teachers
  return derived


def teacher_workdir(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'teachers', name)


def teacher_train_dir(config, name: str, workdir: str) -> str:
  """Where teacher `name`'s checkpoints are: its checkpoint or our stage."""
  path = config.teachers[name].checkpoint
  if not path:
    return os.path.join(teacher_workdir(workdir, name), 'train')
  return resolve_train_dir(path)


def resolve_train_dir(path: str) -> str:
  """A jard workdir's `train/` directory, or `path` itself (also a `.pt`)."""
  if os.path.isdir(os.path.join(path, 'train', 'checkpoints')):
    return os.path.join(path, 'train')
  return path


def build_model(spec, num_classes: int):
  """The teacher's module (eval only, so no BatchNorm axis)."""
  kwargs = {k: v for k, v in spec.model.to_dict().items() if k != 'name'}
  return models.create_model(spec.model.name, num_classes, **kwargs)


TORCH_SUFFIXES = ('.pt', '.pth')


def is_torch_checkpoint(path: str) -> bool:
  """A PyTorch state_dict file (converted by `jard.interop`)."""
  return path.endswith(TORCH_SUFFIXES)


def load_variables(train_dir: str, model, input_shape, *,
                   which: str = 'best', field: str = 'checkpoint',
                   arch: Optional[str] = None) -> dict:
  """`{'params', 'batch_stats'}` of a jard training run, restored read-only.

  `which='best'` takes the best-by-metric save and falls back to the latest
  when the run kept none. A `.pt`/`.pth` path is a PyTorch state_dict
  (e.g. the TRADES `model_cifar_wrn.pt`), read with `weights_only=True` and
  converted for registry model `arch` by `jard.interop`.
  """
  if is_torch_checkpoint(train_dir):
    from jard import interop  # pylint: disable=g-import-not-at-top
    try:
      return interop.convert(arch, interop.load_state_dict(train_dir), model,
                             input_shape=tuple(input_shape))
    except ValueError as e:
      raise ValueError(f'{field}={train_dir!r}: {e}') from None
  if not os.path.isdir(os.path.join(train_dir, 'checkpoints')):
    raise FileNotFoundError(
        f'{field}: no jard checkpoints under {train_dir!r}; give a jard run '
        'workdir (or its train/ directory), or leave it empty to train the '
        'teacher in the teachers stage.')
  args = checkpoint.variables_restore_args(model, input_shape)
  # The best manager keeps one save, so its only step is the best one.
  subdirs = (['best'] if which == 'best' else []) + ['checkpoints']
  for subdir in subdirs:
    directory = os.path.join(os.path.abspath(train_dir), subdir)
    if not os.path.isdir(directory):
      continue
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=False,
                                                        read_only=True))
    try:
      steps = manager.all_steps()
      if not steps:
        continue
      step = max(steps)
      logging.info('Teacher from %s (step %d).', directory, step)
      try:
        return manager.restore(step, args=args)
      except Exception as e:  # Orbax raises several types on a mismatch.
        raise ValueError(
            f'{field}: the checkpoint {directory!r} (step {step}) does not '
            f'fit the configured teacher model ({type(e).__name__}: {e}).'
        ) from e
    finally:
      manager.close()
  raise FileNotFoundError(f'{field}: no checkpoint saved under {train_dir!r}'
                          ' yet.')


def build_teachers(config, workdir: str, input_shape,
                   num_classes: int) -> dict[str, Teacher]:
  """Every configured teacher, frozen, from its checkpoint."""
  teachers = {}
  for name in config.teachers:
    spec = config.teachers[name]
    model = build_model(spec, num_classes)
    variables = load_variables(
        teacher_train_dir(config, name, workdir), model, input_shape,
        which=spec.which, field=f'config.teachers.{name}.checkpoint',
        arch=spec.model.name)
    teachers[name] = Teacher(model, variables)
  return teachers


def random_teachers(config, input_shape, num_classes: int,
                    seed: int = 1) -> dict[str, Teacher]:
  """Every configured teacher with freshly initialised weights.

  For what needs a teacher's cost but not its knowledge: throughput
  benchmarks and compile tests.
  """
  teachers = {}
  for i, name in enumerate(config.teachers):
    model = build_model(config.teachers[name], num_classes)
    variables = models.init_variables(model, jax.random.key(seed + i),
                                      input_shape)
    teachers[name] = Teacher(model, variables)
  return teachers


def parameter_count(variables: Optional[dict]) -> int:
  if not variables:
    return 0
  return sum(x.size for x in jax.tree.leaves(variables['params']))
