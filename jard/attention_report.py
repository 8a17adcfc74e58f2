r"""ADER's attention maps as pictures: student, clean teacher, adversarial
teacher, on clean images and on PGD-20 examples against the student.

The student's map is its attention branch's M ∈ [0, 1]^{h×w}; a teacher's
map is its own branch's M when it has one, else its activation attention
(`jard.methods.ader.teacher_map`), as the ADER loss sees them. Every map is
upsampled bilinearly onto the image.

    python -m jard.attention_report --student=runs/ader \
        --data=npz:../shared/data/cifar10/test.npz

The teachers are the run's `config.teachers.natural` and `.robust`.
"""

import functools
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jard import cam_report
from jard import data as data_lib
from jard import evaluate
from jard import teachers as teacher_lib
from jard.methods import ader

GRID = 'attention_grid.png'
COLUMNS = (('input', 'images', None),
           ('student', 'images', 'student_clean'),
           ('clean teacher', 'images', 'natural_clean'),
           ('adv. teacher', 'images', 'robust_clean'),
           ('adversarial', 'adversarial', None),
           ('student (adv)', 'adversarial', 'student_adversarial'),
           ('clean teacher (adv)', 'adversarial', 'natural_adversarial'),
           ('adv. teacher (adv)', 'adversarial', 'robust_adversarial'))


def attention_grid(student, natural, robust, images, labels, *,
                   eps: float = 8 / 255, attack: str = 'pgd20_sat',
                   seed: int = 0) -> dict:
  """Maps of the three models on `images` and on their adversarial versions.

  Args:
    student: `(model, variables)`; the model must have an attention branch.
    natural, robust: `(model, variables)` of the two teachers.
    images: `[k, H, W, C]` uint8 or float in [0, 1]; labels `[k]`.
    eps, attack, seed: the attack against the student (`jard.evaluate`).

  Returns:
    The grid dict of `cam_report.write_grid` (keys `images`, `adversarial`,
    `labels`, `<who>_<clean|adversarial>`).
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  labels = np.asarray(labels, np.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(len(images)))
  x_adv, maps = _maps(jnp.asarray(images), jnp.asarray(labels), keys,
                      models_=(student[0], natural[0], robust[0]),
                      variables=(student[1], natural[1], robust[1]),
                      attack=attack, eps=eps)
  grid = {'images': images, 'adversarial': np.asarray(x_adv),
          'labels': labels}
  grid.update({k: np.asarray(v) for k, v in maps.items()})
  return grid


@functools.partial(jax.jit, static_argnames=('models_', 'attack', 'eps'))
def _maps(x, y, keys, *, models_, variables, attack, eps):
  student, natural, robust = models_
  s_vars, n_vars, r_vars = variables
  logits_fn = lambda z: student.apply(s_vars, z, train=False).logits
  x_adv = evaluate.get_attack(attack)(logits_fn, x, y, keys, eps)
  maps = {}
  for which, z in (('clean', x), ('adversarial', x_adv)):
    s = student.apply(s_vars, z, train=False)
    if s.attention_map is None:
      raise ValueError('the student has no attention branch '
                       '(config.model.attention_stage).')
    maps[f'student_{which}'] = s.attention_map
    for who, model, v in (('natural', natural, n_vars),
                          ('robust', robust, r_vars)):
      maps[f'{who}_{which}'] = ader.teacher_map(model.apply(v, z,
                                                            train=False))
  return x_adv, maps


def report(workdir: str, *, data: str = '', num_images: int = 6,
           which: str = 'last', out: str = '') -> str:
  """Writes `<out>/attention_grid.png` for a jard ADER run; returns its path."""
  config, test, student = cam_report.load_run_and_test_set(workdir, data,
                                                           which)
  shape = test.images.shape[1:]
  frozen = teacher_lib.build_teachers(config, workdir, shape,
                                      config.dataset.num_classes)
  teachers = [(frozen[n].model, frozen[n].variables)
              for n in ('natural', 'robust')]
  rows = data_lib.eval_indices(len(test.labels), num_images)
  grid = attention_grid(student, *teachers, test.images[rows],
                        test.labels[rows])
  out = out or os.path.join(workdir, 'attention')
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, GRID)
  cam_report.write_grid(path, grid, columns=COLUMNS,
                        title=f'{config.method.name}: attention maps')
  return path


def _define_flags():
  flags.DEFINE_string('student', None, 'A jard ADER run.', required=True)
  flags.DEFINE_string('data', '', "Test source (default: the run's).")
  flags.DEFINE_integer('num_images', 6, 'Rows of the grid.')
  flags.DEFINE_string('which', 'last', 'Student checkpoint: last or best.')
  flags.DEFINE_string('out', '', 'Output directory (default: '
                      '<student>/attention).')


def main(argv):
  del argv
  f = flags.FLAGS
  print(report(f.student, data=f.data, num_images=f.num_images,
               which=f.which, out=f.out))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
