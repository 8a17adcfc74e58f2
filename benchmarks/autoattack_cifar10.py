r"""AutoAttack standard on a fixed ResNet-18 and 1000 CIFAR-10 test images.

The model: jard's `resnet18` trained naturally with a fixed recipe (seed 0,
`train_10k.npz`, `--epochs` epochs, SGD 0.1 cosine, batch 128) in
`<workdir>/model`, reused when already there; or any jard run given with
`--checkpoint` (its config.json names the model). Then AutoAttack `standard`
with the reference settings (APGD-CE 100 iterations, APGD-T and FAB-T 9
targets × 100 iterations, Square 5000 queries) runs on a fixed subset of
1000 test images (`eval_indices`, seed 0). Every step is compiled
first, for every batch size the run may use (`AutoAttack.precompile`), so
the timed run measures the attacks; compile time is reported on its own.
Results go to `benchmarks/results/autoattack_cifar10.md` (and `.json`).

On 2 CPU cores the attacks take hours, so the run keeps its progress in
`<workdir>/<out>_progress.npz` after every batch: the same command, run
again, resumes after the last finished batch with the same per-example
results, and each attack's seconds add up over the resumed runs.

    python benchmarks/autoattack_cifar10.py            # trains, then attacks
    python benchmarks/autoattack_cifar10.py --checkpoint=runs/pgd_at
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
from jard import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import evaluate_autoattack  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import teachers  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', '../shared/data/cifar10', 'npz directory.')
flags.DEFINE_string('workdir', 'runs/bench_autoattack', 'Work root.')
flags.DEFINE_string('checkpoint', '', 'A jard run to attack instead.')
flags.DEFINE_integer('epochs', 2, 'Epochs of the fixed model recipe.')
flags.DEFINE_string('model', 'resnet18', 'Architecture of the fixed model.')
flags.DEFINE_integer('train_examples', -1, 'Smoke runs: fewer training '
                     'images.')
flags.DEFINE_integer('num_examples', 1000, 'Test images attacked.')
flags.DEFINE_integer('batch_size', 250, 'AutoAttack batch (reference: 250).')
flags.DEFINE_string('out', 'autoattack_cifar10', 'Result file stem.')

HERE = os.path.dirname(os.path.abspath(__file__))


def fixed_model_config(data_dir: str, epochs: int):
  config = natural_config.get_config()
  config.model.name = FLAGS.model
  config.dataset.train_examples = FLAGS.train_examples
  config.dataset.train = 'npz:' + os.path.join(data_dir, 'train_10k.npz')
  config.dataset.test = 'npz:' + os.path.join(data_dir, 'test.npz')
  config.num_epochs = epochs
  config.schedule.name = 'cosine'
  config.select.metric = ''
  config.stages = 'train'
  config.log_every_steps = 20
  config.progress_bar = False
  return config


def main(argv):
  del argv
  data_dir = os.path.abspath(FLAGS.data_dir)
  checkpoint = FLAGS.checkpoint
  start = time.perf_counter()
  if not checkpoint:
    checkpoint = os.path.join(FLAGS.workdir, 'model')
    pipeline.run(fixed_model_config(data_dir, FLAGS.epochs), checkpoint)
  train_seconds = time.perf_counter() - start
  train_dir = teachers.resolve_train_dir(checkpoint)
  with open(os.path.join(os.path.dirname(os.path.abspath(train_dir)),
                         'config.json')) as f:
    run_config = json.load(f)
  test_ds = data_lib.load('npz:' + os.path.join(data_dir, 'test.npz'),
                          role='test', field='--data_dir', num_classes=10,
                          image_size=32)
  model_kwargs = {k: v for k, v in run_config['model'].items()
                  if k != 'name'}
  model = models.create_model(run_config['model']['name'], 10, **model_kwargs)
  variables = teachers.load_variables(train_dir, model, (32, 32, 3),
                                      which='last', field='--checkpoint')
  # The step attacked: a run stopped early says so instead of its recipe.
  saved = os.listdir(os.path.join(train_dir, 'checkpoints'))
  step = max((int(d) for d in saved if d.isdigit()), default=None)

  runner = evaluate_autoattack.AutoAttack(model, batch_size=FLAGS.batch_size)
  compile_seconds = runner.precompile(variables, test_ds.images.shape[1:])
  result = runner.run(
      variables, test_ds, num_examples=FLAGS.num_examples,
      progress_path=os.path.join(FLAGS.workdir, FLAGS.out + '_progress.npz'))
  summary = result.summary()
  total = sum(result.seconds.values())
  attacked = {}
  robust = result.clean.copy()
  for name in result.broken_by:
    attacked[name] = int(robust.sum())
    robust &= ~result.broken_by[name]

  lines = [
      f'# AutoAttack standard: {run_config["model"]["name"]}, '
      f'{FLAGS.num_examples} CIFAR-10 test images', '',
      f'Machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores (affinity {len(os.sched_getaffinity(0))}),'
      f' devices {jax.devices()}, jax {jax.__version__}.', '',
      f'Model: `{run_config["model"]["name"]}` from `{checkpoint}` '
      f'({run_config["method"]["name"]}, {run_config["num_epochs"]} epochs '
      f'on {os.path.basename(run_config["dataset"]["train"])}; the last '
      f'checkpoint, step {step}). '
      + (f'Training took {train_seconds / 60:.1f} min.'
         if not FLAGS.checkpoint and train_seconds > 10 else ''),
      '',
      f'AutoAttack `standard`, ε = 8/255, the reference settings '
      f'({summary["settings"]}), on {summary["num_examples"]} test images '
      '(a fixed seeded subset), batch '
      f'{FLAGS.batch_size}. Compiling every step for every batch size '
      f'first: {compile_seconds:.1f} s (not in the times below).', '',
      f'**Clean accuracy {100 * summary["accuracy"]["clean"]:.1f}%, robust '
      f'accuracy {100 * summary["robust_accuracy"]:.1f}%. Total '
      f'{total:.1f} s: {summary["images_per_second"]:.2f} images/s.**', '',
      '| stage | points attacked | robust accuracy after (%) | seconds |',
      '|---|---|---|---|',
      f'| clean | - | {100 * result.accuracy["clean"]:.1f} | '
      f'{result.seconds["clean"]:.1f} |']
  for name in result.broken_by:
    lines.append(f'| {name} | {attacked[name]} | '
                 f'{100 * result.accuracy[name]:.1f} | '
                 f'{result.seconds[name]:.1f} |')
  lines += ['', 'Each attack runs only on the points still robust, so its '
            'time scales with them (an attack with 0 points costs nothing).',
            'A run stopped and resumed from its progress file adds the '
            'seconds of each part.',
            '', f'Sanity checks: {summary["warnings"] or "all passed"}.', '']
  os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
  with open(os.path.join(HERE, 'results', FLAGS.out + '.md'), 'w') as f:
    f.write('\n'.join(lines))
  with open(os.path.join(HERE, 'results', FLAGS.out + '.json'), 'w') as f:
    json.dump({**summary, 'compile_seconds': compile_seconds, 'step': step,
               'points_attacked': attacked}, f, indent=2)
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
