r"""How much class signal a teacher's soft labels carry (distillation budget).

The distillation students of `distill_cifar10.py` learn from the teacher's
softmax. A weak teacher's soft labels are close to uniform, and a high
temperature flattens them further, so a pure-KL student (ARD with α = 1,
τ = 30; RSLAD) gets little class signal per step, while a PGD-AT student
learns from the hard labels. This measures, on the training images, the
teacher's accuracy, mean max probability, mean probability of the true
class and the entropy at τ = 1 and at ARD's τ = 30 (uniform: ln 10 = 2.303).

    python benchmarks/teacher_confidence.py --teacher_checkpoint=<run>
"""

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jard import cam_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('teacher_checkpoint', '', 'A jard run.')
flags.DEFINE_string('data', '../shared/data/cifar10/train_10k.npz',
                    'Images the teacher labels (npz).')
flags.DEFINE_list('temperatures', '1,30', 'Softmax temperatures τ.')
flags.DEFINE_string('out', 'distill_cifar10_teacher_confidence',
                    'Result file stem.')

HERE = os.path.dirname(os.path.abspath(__file__))


def entropy(probs: np.ndarray) -> float:
  return float(np.mean(-np.sum(probs * np.log(probs + 1e-12), axis=-1)))


def main(argv):
  del argv
  ds = data_lib.load('npz:' + FLAGS.data, role='train', num_classes=10,
                     image_size=32, field='--data')
  model, variables, run = cam_report.load_run(FLAGS.teacher_checkpoint,
                                              ds.images.shape[1:])
  logits_fn = jax.jit(lambda x: model.apply(variables, x, train=False).logits)
  logits = np.concatenate([
      np.asarray(logits_fn(data_lib.to_float(ds.images[i:i + 500])))
      for i in range(0, len(ds.labels), 500)])
  rows = np.arange(len(ds.labels))
  lines = [f'# Teacher soft labels: `{run.model.name}` '
           f'({run.method.name}) on {len(rows)} training images', '',
           f'Accuracy {100 * np.mean(logits.argmax(-1) == ds.labels):.1f}%. '
           f'Uniform entropy ln 10 = {np.log(10):.4f}.', '',
           '| τ | mean max probability | mean probability of the label | '
           'entropy |', '|---|---|---|---|']
  for tau in map(float, FLAGS.temperatures):
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits) / tau))
    lines.append(f'| {tau:g} | {probs.max(-1).mean():.4f} | '
                 f'{probs[rows, ds.labels].mean():.4f} | '
                 f'{entropy(probs):.4f} |')
  with open(os.path.join(HERE, 'results', FLAGS.out + '.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
