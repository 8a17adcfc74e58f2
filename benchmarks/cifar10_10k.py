r"""Real-data sanity runs on the 10k CIFAR-10 subset (issue: foundation).

Trains a ResNet-20 naturally and with PGD-AT on `train_10k.npz` (1000 images
per class) and evaluates on the full `test.npz`, then writes
`benchmarks/results/cifar10_10k_<run>.md` with accuracies, wall time and
training images/s.

    python benchmarks/cifar10_10k.py --run=natural
    python benchmarks/cifar10_10k.py --run=pgd_at

Data: `--data_dir` (default `../shared/data/cifar10`), never copied here.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import natural as natural_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import pgd_at as pgd_at_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_enum('run', 'natural', ['natural', 'pgd_at'], 'Which run.')
flags.DEFINE_string('data_dir', '../shared/data/cifar10', 'npz directory.')
flags.DEFINE_string('workdir', 'runs/bench_cifar10_10k', 'Work root.')
flags.DEFINE_integer('epochs', -1, 'Override the epoch count.')
flags.DEFINE_integer('eval_examples', -1, 'Robust-eval examples (-1: all).')

HERE = os.path.dirname(os.path.abspath(__file__))


def make_config(run: str, data_dir: str):
  if run == 'natural':
    config = natural_config.get_config()
    config.num_epochs = 30
    config.eval.attacks = 'clean,fgsm'
  else:
    config = pgd_at_config.get_config()
    config.num_epochs = 5
    # PGD-3 with step 4/255 keeps a one-core run inside a session.
    config.attack.train.steps = 3
    config.attack.train.step_size = 4 / 255
    # The recorded run used the 0.001-Gaussian start (AdaAD's baseline).
    config.attack.train.init = 'N'
    config.eval.attacks = 'clean,fgsm,pgd20_sat,cw_inf'
  config.model.name = 'resnet20'
  config.dataset.train = 'npz:' + os.path.join(data_dir, 'train_10k.npz')
  config.dataset.test = 'npz:' + os.path.join(data_dir, 'test.npz')
  config.batch_size = 128
  config.schedule.name = 'cosine'
  config.select.num_examples = 500
  config.select.every_epochs = 10
  config.log_every_steps = 20
  config.progress_bar = False
  config.eval.batch_size = 500
  return config


def main(argv):
  del argv
  config = make_config(FLAGS.run, os.path.abspath(FLAGS.data_dir))
  if FLAGS.epochs > 0:
    config.num_epochs = FLAGS.epochs
  config.eval.num_examples = FLAGS.eval_examples
  workdir = os.path.join(FLAGS.workdir, FLAGS.run)
  start = time.time()
  results = pipeline.run(config, workdir)
  wall = time.time() - start
  with open(os.path.join(workdir, 'train', 'train_stats.json')) as f:
    stats = json.load(f)
  lines = [
      f'# CIFAR-10 10k subset: {FLAGS.run} ResNet-20', '',
      f'Machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores, devices {jax.devices()}, jax '
      f'{jax.__version__}.', '',
      f'Recipe: {config.method.name}, {config.num_epochs} epochs on '
      f'train_10k.npz, batch {config.batch_size}, SGD lr '
      f'{config.optimizer.lr} cosine, wd {config.optimizer.weight_decay}, '
      f'train attack {config.attack.train.to_dict()}.', '',
      f'Wall time (train + eval, incl. compile): {wall / 60:.1f} min; '
      f'training {stats["train_seconds"] / 60:.1f} min at '
      f'{stats["images_per_sec"]:.1f} images/s.', '']
  for name, res in results.items():
    acc = res['accuracy']
    lines.append(f'## {name} checkpoint (step {res["step"]}, '
                 f'{acc["num_examples"]} test examples)')
    lines.append('')
    lines.append('| attack | accuracy (%) |')
    lines.append('|---|---|')
    lines += [f'| {k} | {100 * v:.2f} |' for k, v in acc.items()
              if k != 'num_examples']
    lines.append('')
  out = os.path.join(HERE, 'results', f'cifar10_10k_{FLAGS.run}.md')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
