r"""Teacher ↔ student CAMs: the mean alignment MSE on a test set and a grid.

SmaraAD claims that aligning attribution regions makes the student look
where the teacher looks, on clean and on adversarial images, more than
KL-only distillation does. `compare` measures it: the mean over test images
of SmaraAD's L_align (Eq. 7: normalised CAMs of the true class, resized to
the larger map, squared difference averaged over pixels) between a student
and a teacher, on clean images and on PGD-20 examples crafted against the
student (CE, ε = 8/255, step 2/255, random start). `write_grid` draws the
input, teacher CAM and student CAM on clean and adversarial images.

    python -m jard.cam_report --student=runs/smaraad \
        --data=npz:../shared/data/cifar10/test.npz --out=runs/smaraad/cam

The teacher defaults to the student run's `config.teachers.robust` (its
checkpoint, or the run's own teacher stage); `--teacher` names another jard
run or a PyTorch state_dict (`--teacher_model` then gives its architecture).
"""

import functools
import json
import os
from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jard import data as data_lib
from jard import evaluate
from jard import models
from jard import teachers as teacher_lib
from jard.losses import cam as cam_lib

GRID = 'cam_grid.png'


def _cams(model, variables, x, classes):
  """`(logits, normalised CAM [B, H, W])` of one model on x."""
  kernel = cam_lib.head_kernel(variables['params'], who=type(model).__name__)
  outputs = model.apply(variables, x, train=False)
  return outputs.logits, cam_lib.normalized_cam(outputs.features, kernel,
                                                classes)


# The models are static and their variables arguments: one compile per pair
# of architectures, shared by every student of that architecture, and no
# weights baked into the program as constants.
@functools.partial(jax.jit, static_argnames=('models_', 'attack', 'eps'))
def _batch(x, y, keys, variables, *, models_, attack, eps):
  """Clean and adversarial CAMs and their per-example MSE on one batch."""
  (student, teacher), (s_vars, t_vars) = models_, variables
  x_adv = evaluate.get_attack(attack)(
      lambda z: student.apply(s_vars, z, train=False).logits, x, y, keys, eps)
  out = {}
  for name, z in (('clean', x), ('adversarial', x_adv)):
    _, s_cam = _cams(student, s_vars, z, y)
    _, t_cam = _cams(teacher, t_vars, z, y)
    out[name] = (s_cam, t_cam, cam_lib.cam_alignment(s_cam, t_cam))
  return x_adv, out


def compare(student, teacher, images: np.ndarray, labels: np.ndarray, *,
            batch_size: int = 250, eps: float = 8 / 255,
            attack: str = 'pgd20_sat', seed: int = 0,
            grid_examples: int = 8) -> dict:
  """Mean teacher↔student CAM MSE on clean and adversarial images.

  Args:
    student, teacher: `(model, variables)` pairs of registry CNNs.
    images: `[N, H, W, C]` uint8 or float in [0, 1].
    labels: `[N]` int; the CAM class.
    batch_size: images per compiled batch (the last batch is padded); at
      most `N`.
    eps: the attack's L∞ budget.
    attack: a suite attack (`jard.evaluate`) crafted against the student.
    seed: the attack's random start.
    grid_examples: how many first examples to keep for `write_grid`.

  Returns:
    `{'clean': mse, 'adversarial': mse, 'num_examples': N, 'attack',
    'grid': {...arrays of the first examples}}`.
  """
  models_, variables = (student[0], teacher[0]), (student[1], teacher[1])
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  labels = np.asarray(labels, np.int32)
  n = len(images)
  # Fewer images than a batch: one batch of exactly n, not n padded to 250
  # (PGD-20 on the padding would cost most of the time of a small report).
  batch_size = min(batch_size, n)
  sums = {'clean': 0.0, 'adversarial': 0.0}
  grid = None
  base = jax.random.key(seed)
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    count = len(x)
    pad = batch_size - count  # one shape: no recompile for the last batch
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros((pad,), y.dtype)])
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(start, start + batch_size))
    x_adv, out = _batch(jnp.asarray(x), jnp.asarray(y), keys, variables,
                        models_=models_, attack=attack, eps=eps)
    for name in sums:
      sums[name] += float(np.sum(np.asarray(out[name][2])[:count]))
    if grid is None:
      k = min(grid_examples, count)
      grid = {'images': x[:k], 'labels': y[:k],
              'adversarial': np.asarray(x_adv)[:k],
              **{f'{who}_{name}': np.asarray(out[name][i])[:k]
                 for name in sums for i, who in ((0, 'student'),
                                                  (1, 'teacher'))}}
  return {'clean': sums['clean'] / n, 'adversarial': sums['adversarial'] / n,
          'num_examples': n, 'attack': attack, 'grid': grid}


# (column title, image key, map key or None) of the CAM grid.
CAM_COLUMNS = (('input', 'images', None),
               ('teacher CAM', 'images', 'teacher_clean'),
               ('student CAM', 'images', 'student_clean'),
               ('adversarial', 'adversarial', None),
               ('teacher CAM (adv)', 'adversarial', 'teacher_adversarial'),
               ('student CAM (adv)', 'adversarial', 'student_adversarial'))


def write_grid(path: str, grid: dict, *, columns=CAM_COLUMNS,
               title: str = '') -> None:
  """A PNG with one row per example and one column per `(title, image key,
  map key)`: the image, with the `[h, w]` map (in [0, 1]) upsampled
  bilinearly and overlaid when a map key is given."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  k, size = len(grid['images']), grid['images'].shape[1:3]
  fig, axes = plt.subplots(k, len(columns), figsize=(1.6 * len(columns),
                                                     1.6 * k), squeeze=False)
  for row in range(k):
    for col, (name, image_key, map_key) in enumerate(columns):
      ax = axes[row, col]
      ax.imshow(np.clip(grid[image_key][row], 0, 1))
      if map_key:
        heat = np.asarray(cam_lib.resize_cam(
            jnp.asarray(grid[map_key][row][None]), size))[0]
        ax.imshow(heat, cmap='jet', alpha=0.5, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(name, fontsize=7)
    axes[row, 0].set_ylabel(f'y={int(grid["labels"][row])}', fontsize=7)
  if title:
    fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def load_run(workdir: str, input_shape, *, which: str = 'last'):
  """`(model, variables, config)` of a jard run (its config.json)."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  kwargs = {k: v for k, v in config.model.items() if k != 'name'}
  model = models.create_model(config.model.name,
                              config.dataset.num_classes, **kwargs)
  variables = teacher_lib.load_variables(
      teacher_lib.resolve_train_dir(workdir), model, input_shape, which=which,
      field='--student')
  return model, variables, config


def load_run_and_test_set(workdir: str, data: str = '', which: str = 'last'):
  """`(config, test set, (model, variables))` of a jard run; `data`
  replaces the run's `config.dataset.test` when given."""
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  test = data_lib.load(data or config.dataset.test, role='test',
                       field='--data', num_classes=config.dataset.num_classes,
                       image_size=config.dataset.image_size)
  return config, test, load_run(workdir, test.images.shape[1:],
                                which=which)[:2]


def report(workdir: str, *, teacher: str = '', teacher_model: str = '',
           data: str = '', num_examples: int = 1000, which: str = 'last',
           out: str = '') -> dict:
  """The command's work: CAM MSE of a jard run against its teacher.

  Writes `<out>/cam_grid.png` and `<out>/cam_mse.json` (default out:
  `<workdir>/cam`) and returns the MSE dict.
  """
  config, test, student = load_run_and_test_set(workdir, data, which)
  shape = test.images.shape[1:]
  spec = config.teachers.robust if 'robust' in config.teachers else None
  if not teacher and spec is None:
    raise ValueError(f'{workdir} has no config.teachers.robust; give '
                     '--teacher (and --teacher_model).')
  arch = teacher_model or spec.model.name
  t_model = models.create_model(arch, config.dataset.num_classes)
  t_dir = (teacher_lib.resolve_train_dir(teacher) if teacher
           else teacher_lib.teacher_train_dir(config, 'robust', workdir))
  t_vars = teacher_lib.load_variables(
      t_dir, t_model, shape, which=spec.which if spec else 'last',
      field='--teacher', arch=arch)
  rows = data_lib.eval_indices(len(test.labels), num_examples)
  result = compare(student, (t_model, t_vars), test.images[rows],
                   test.labels[rows])
  out = out or os.path.join(workdir, 'cam')
  os.makedirs(out, exist_ok=True)
  write_grid(os.path.join(out, GRID), result.pop('grid'),
             title=f'{config.method.name} student vs {arch} teacher')
  with open(os.path.join(out, 'cam_mse.json'), 'w') as f:
    json.dump(result, f, indent=2)
  logging.info('CAM MSE teacher↔student: %s (grid: %s)', result,
               os.path.join(out, GRID))
  return result


def _define_flags():
  """Command-line flags, defined only when run as a command (importing the
  module next to other absl programs must not clash with their flags)."""
  flags.DEFINE_string('student', None, 'A jard run (workdir with '
                      'config.json).', required=True)
  flags.DEFINE_string('teacher', '', 'A jard run or .pt; default: the '
                      "student's config.teachers.robust.")
  flags.DEFINE_string('teacher_model', '', 'Registry architecture of '
                      "--teacher (default: the student config's robust "
                      'teacher model).')
  flags.DEFINE_string('data', '', "Test source (default: the student's "
                      'config.dataset.test).')
  flags.DEFINE_integer('num_examples', 1000, 'Test images (fixed subset).')
  flags.DEFINE_string('which', 'last', 'Student checkpoint: last or best.')
  flags.DEFINE_string('out', '', 'Output directory (default: '
                      '<student>/cam).')


def main(argv):
  del argv
  f = flags.FLAGS
  print(json.dumps(report(
      f.student, teacher=f.teacher, teacher_model=f.teacher_model,
      data=f.data, num_examples=f.num_examples, which=f.which, out=f.out)))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
