r"""Distillation on the 10k CIFAR-10 subset from one PGD-AT teacher.

One pipeline run (`configs/rslad.py` changed as below) takes the teacher
(`--teacher_checkpoint`, or trains one), then RSLAD and, as
`config.baselines`, the `--students` (default: a PGD-AT student, ARD, AdaAD,
SmaraAD and SmaraAD++; with `--natural_teacher_checkpoint` also MTARD, ADER
and its single-teacher ablations, CIARD with each push mode): all
students the same architecture, trained equally long with the same attack
budget, each method with its own inner loss, init, BatchNorm mode and KL
reduction. Every student is evaluated (clean, PGD-20, CW∞) on a fixed test
subset at its last checkpoint, and its teacher↔student CAM MSE is measured
on clean and PGD-20 images (`jard.cam_report`). The comparison goes to
`benchmarks/results/distill_cifar10.md` (+ `.json` and a SmaraAD CAM grid).

CPU budget (2 cores): the teacher is a ResNet-20, the students ResNet-8,
and training attacks use `--attack_steps` steps of 2.5·ε/steps (the papers
use 10 × 2/255), the same for every student.

    python benchmarks/distill_cifar10.py --teacher_checkpoint=<pgd_at run>
    python benchmarks/distill_cifar10.py --teacher_checkpoint=<pgd_at run> \
        --natural_teacher_checkpoint=<natural run> --out=multi_teacher \
        --students=mtard,ader,ader_clean_teacher,ader_adv_teacher,ciard,\
ciard_bounded,ciard_no_push --workdir=runs/bench_multi_teacher
    python benchmarks/distill_cifar10.py --student_epochs=10
"""

import json
import os
import platform
import shutil
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import rslad as rslad_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import attention_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import cam_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import reports  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', '../shared/data/cifar10', 'npz directory.')
flags.DEFINE_string('workdir', 'runs/bench_distill', 'Work directory.')
flags.DEFINE_string('teacher', 'resnet20', 'Teacher architecture.')
flags.DEFINE_string('student', 'resnet8', 'Student architecture.')
flags.DEFINE_string('teacher_checkpoint', '', 'A jard PGD-AT run to distill '
                    'from (its last checkpoint) instead of training one.')
flags.DEFINE_integer('teacher_epochs', 8, 'Teacher PGD-AT epochs.')
flags.DEFINE_integer('student_epochs', 8, 'Epochs of every student.')
flags.DEFINE_integer('attack_steps', 5, 'Training attack steps (all runs).')
flags.DEFINE_integer('eval_examples', 1000, 'Test images evaluated.')
flags.DEFINE_integer('train_examples', -1, 'Smoke runs: fewer training '
                     'images (-1: all 10k).')
flags.DEFINE_list('students', 'pgd_at,ard,adaad,smaraad,smaraad_pp',
                  'Students trained next to RSLAD (keys of STUDENTS).')
flags.DEFINE_string('natural_teacher_checkpoint', '', 'A jard natural run: '
                    'the clean teacher of MTARD, ADER and CIARD.')
flags.DEFINE_string('natural_teacher', 'resnet20', 'Its architecture.')
flags.DEFINE_integer('cam_examples', 1000, 'Test images of the teacher↔'
                     'student CAM MSE (0: skip).')
flags.DEFINE_string('out', 'distill_cifar10', 'Result file stem.')
flags.DEFINE_bool('report_only', False, 'Write the result files from the '
                  "finished runs' results.json, without running the "
                  'pipeline (e.g. after the code changed the runs\' config '
                  'records).')

HERE = os.path.dirname(os.path.abspath(__file__))
EPS = 8 / 255


def _ader(**method):
  return {'method': {'name': 'ader', 'beta': 1.0, 'aux_weight': 1.0,
                     'teachers': 'both', 'distill': 'both',
                     'map_normalization': 'softmax', 'map_temperature': 1.0,
                     **method},
          'model': {'name': FLAGS.student, 'attention_stage': 2}}


def _ciard(push):
  # The budget is a few epochs: the teacher is retrained from epoch 1 (the
  # paper: 50 of 300), the student keeps the shared cosine schedule.
  return {'method': {'name': 'ciard', 'push': push, 'push_margin': 1.0,
                     'weights': 'fixed', 'teacher_bn': 'train',
                     'per_batch_decay_bug': False,
                     'rate_boundaries': (215, 260, 285), 'retrain': True,
                     'retrain_from_epoch': 1, 'teacher_lr': 1e-4,
                     'teacher_momentum': 0.1, 'teacher_weight_decay': 2e-4}}


# Students next to RSLAD: name -> config overrides (a method group replaces
# the student's). MTARD, ADER and CIARD need --natural_teacher_checkpoint.
STUDENTS = {
    'pgd_at': lambda: {'method': {'name': 'pgd_at'},
                       'attack': {'train': {'init': 'U'}}},
    'ard': lambda: {'method': {'name': 'ard', 'alpha': 1.0,
                               'temperature': 30.0},
                    'attack': {'train': {'init': 'U'}}},
    'adaad': lambda: {'method': {'name': 'adaad', 'alpha': 1.0,
                                 'reduction': 'em'}},
    'smaraad': lambda: {'method': {'name': 'smaraad', 'gamma': 1000.0,
                                   'c': 2.0, 'alpha': 1.0, 'lam': 0.1,
                                   'cam_class': 'label'}},
    'smaraad_pp': lambda: {'method': {'name': 'smaraad_pp', 'gamma': 1000.0,
                                      'c': 2.0, 'alpha': 1.0, 'lam': 0.1,
                                      'cam_class': 'label'}},
    'mtard': lambda: {'method': {'name': 'mtard', 'gamma': 1.0,
                                 'eta': 0.025}},
    'ader': _ader,
    'ader_clean_teacher': lambda: _ader(teachers='clean'),
    'ader_adv_teacher': lambda: _ader(teachers='adversarial'),
    'ciard': lambda: _ciard('subtract'),
    'ciard_bounded': lambda: _ciard('bounded'),
    'ciard_no_push': lambda: _ciard('off'),
}


def make_config():
  data_dir = os.path.abspath(FLAGS.data_dir)
  config = rslad_config.get_config()
  config.model.name = FLAGS.student
  config.dataset.train = 'npz:' + os.path.join(data_dir, 'train_10k.npz')
  config.dataset.test = 'npz:' + os.path.join(data_dir, 'test.npz')
  config.num_epochs = FLAGS.student_epochs
  config.dataset.train_examples = FLAGS.train_examples
  config.schedule.name = 'cosine'
  config.attack.train.steps = FLAGS.attack_steps
  config.attack.train.step_size = 2.5 * EPS / FLAGS.attack_steps
  # Every model is evaluated at its last checkpoint: no selection on the
  # test set, and no per-epoch selection cost.
  config.select.metric = ''
  config.log_every_steps = 20
  config.progress_bar = False
  config.eval.attacks = 'clean,pgd20_sat,cw_inf'
  config.eval.num_examples = FLAGS.eval_examples
  config.eval.autoattack.version = ''  # AutoAttack: benchmarks/autoattack_*
  config.eval.curve_epsilons = ''
  config.eval.batch_size = 500
  # One PGD-AT teacher (Madry recipe, init U) for every student.
  config.teachers.robust = default.teacher(
      FLAGS.teacher, method='pgd_at', which='last',
      checkpoint=os.path.abspath(FLAGS.teacher_checkpoint)
      if FLAGS.teacher_checkpoint else '')
  recipe = config.teachers.robust.recipe
  recipe.num_epochs = FLAGS.teacher_epochs
  recipe.attack = ml_collections.ConfigDict({'train': {'init': 'U'}})
  if FLAGS.natural_teacher_checkpoint:  # MTARD, ADER, CIARD
    config.teachers.natural = default.teacher(
        FLAGS.natural_teacher, method='natural', which='last',
        checkpoint=os.path.abspath(FLAGS.natural_teacher_checkpoint))
  # Students next to RSLAD; method-specific settings come with the method
  # group (init: ARD uses U, AdaAD N, as their configs).
  for name in FLAGS.students:
    if name not in STUDENTS:
      raise app.UsageError(f'--students: {name!r} is not one of '
                           f'{sorted(STUDENTS)}.')
    config.baselines[name] = ml_collections.ConfigDict(STUDENTS[name]())
  return config


def _run_dir(label: str) -> str:
  """The workdir of a compared run, from its comparison label."""
  first = label.split(' ')[0]
  return {'student': FLAGS.workdir,
          'teacher': os.path.join(FLAGS.workdir, 'teachers', 'robust')}.get(
              first, os.path.join(FLAGS.workdir, 'baselines', first))


def _images_per_second(label: str) -> float:
  """Training throughput of a compared run, from its train_stats.json, or
  the mean of its logged windows when a rerun that took no step wrote it."""
  train_dir = os.path.join(_run_dir(label), 'train')
  try:
    with open(os.path.join(train_dir, 'train_stats.json')) as f:
      stats = json.load(f)
    if stats['train_images']:
      return stats['images_per_sec']
    with open(os.path.join(train_dir, 'metrics.jsonl')) as f:
      logged = [json.loads(line).get('train/images_per_sec') for line in f]
    return float(np.mean([v for v in logged if v is not None]))
  except (OSError, KeyError, ValueError):
    return float('nan')


def _cam_mse(label: str) -> tuple[dict, str]:
  """The run's CAM MSE dict and the path of its CAM grid PNG.

  SmaraAD runs' eval stage already measured it (`eval/cam_mse.json`, on
  `--eval_examples` images): reused when the example counts agree, instead
  of attacking the same images again.
  """
  eval_dir = os.path.join(_run_dir(label), 'eval')
  try:
    with open(os.path.join(eval_dir, 'cam_mse.json')) as f:
      mse = json.load(f)
    if mse.get('num_examples') == FLAGS.cam_examples:
      return mse, os.path.join(eval_dir, cam_report.GRID)
  except (OSError, ValueError):
    pass
  mse = cam_report.report(_run_dir(label), num_examples=FLAGS.cam_examples)
  return mse, os.path.join(_run_dir(label), 'cam', cam_report.GRID)


def _stability_row(label: str) -> str:
  """Loss range, gradient norm and last push term of a run's training log."""
  path = os.path.join(_run_dir(label), 'train', 'metrics.jsonl')
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  rows = [r for r in rows if 'train/loss' in r]
  loss = [r['train/loss'] for r in rows]
  push = [r[k] for r in rows[-1:] for k in r if k.endswith('push')]
  return (f'| {label} | {loss[0]:.4f} | {min(loss):.4f} | {max(loss):.4f} | '
          f'{loss[-1]:.4f} | {max(r["train/grad_norm"] for r in rows):.3f} | '
          f'{push[0] if push else float("nan"):.4f} |')


def main(argv):
  del argv
  config = make_config()
  # Students of one architecture share their evaluation steps: a persistent
  # compilation cache compiles each once instead of once per student.
  jax.config.update('jax_compilation_cache_dir',
                    os.path.join(os.path.abspath(FLAGS.workdir), 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  start = time.time()
  if not FLAGS.report_only:
    pipeline.run(config, FLAGS.workdir)
  wall = time.time() - start
  with open(os.path.join(FLAGS.workdir, 'results.json')) as f:
    compared = json.load(f)
  lines = [
      '# Distillation baselines on the 10k CIFAR-10 subset', '',
      f'Machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores, devices {jax.devices()}, jax '
      f'{jax.__version__}.' + (f' Wall time {wall / 60:.1f} min.'
                               if not FLAGS.report_only else ''), '',
      (f'Teacher: {FLAGS.teacher}, the last checkpoint of '
       f'`{FLAGS.teacher_checkpoint}` (PGD-AT). ' if FLAGS.teacher_checkpoint
       else f'Teacher: {FLAGS.teacher}, PGD-AT {FLAGS.teacher_epochs} '
       'epochs. ') +
      f'Students: {FLAGS.student}, {FLAGS.student_epochs} epochs each, '
      f'training attacks {FLAGS.attack_steps} steps of '
      f'{2.5 / FLAGS.attack_steps:.2f}·ε at ε = 8/255, SGD 0.1 cosine. '
      f'Evaluation on {FLAGS.eval_examples} test images (fixed subset); '
      'every model at its last checkpoint.', '',
      '| model | clean (%) | PGD-20 (%) | CW∞ (%) | CAM MSE clean | '
      'CAM MSE PGD-20 | training images/s |',
      '|---|---|---|---|---|---|---|']
  cams, cam_grids = {}, {}
  for name in compared:
    if FLAGS.cam_examples and not name.startswith('teacher'):
      cams[name], cam_grids[name] = _cam_mse(name)
  for name, res in compared.items():
    acc = res['accuracy']
    cam = cams.get(name)
    cam_cells = (f'{cam["clean"]:.4f} | {cam["adversarial"]:.4f}' if cam
                 else '- | -')
    lines.append(f'| {name} | {100 * acc["clean"]:.2f} | '
                 f'{100 * acc["pgd20_sat"]:.2f} | {100 * acc["cw_inf"]:.2f} | '
                 f'{cam_cells} | {_images_per_second(name):.1f} |')
  if cams:
    lines += ['', 'CAM MSE: SmaraAD\'s L_align (normalised CAMs of the true '
              'class, Eq. 7) between the student and the teacher, averaged '
              f'over {FLAGS.cam_examples} test images, clean and PGD-20 '
              'against the student (`jard.cam_report`).']
    grid = [n for n in cams if n.startswith('smaraad ')] or list(cams)
    src = cam_grids[grid[0]]
    dst = os.path.join(HERE, 'results', f'{FLAGS.out}_cam_grid.png')
    shutil.copyfile(src, dst)
    lines += ['', f'![CAM grid of {grid[0]}]({os.path.basename(dst)})']
  ader_runs = [n for n in compared if n.startswith('ader ')]
  if ader_runs:  # issue 7: one attention grid (the eval stage drew it)
    src = os.path.join(_run_dir(ader_runs[0]), 'eval', attention_report.GRID)
    if not os.path.exists(src):
      src = attention_report.report(_run_dir(ader_runs[0]))
    dst = os.path.join(HERE, 'results', f'{FLAGS.out}_attention_grid.png')
    shutil.copyfile(src, dst)
    lines += ['', f'![attention maps of {ader_runs[0]}]'
              f'({os.path.basename(dst)})']
  ciard_runs = [n for n in compared if n.startswith('ciard')]
  if ciard_runs:  # issue 8: is the subtracted push stable?
    lines += ['', 'Training stability of the CIARD runs (logged every 20 '
              'steps; the loss includes the subtracted or bounded push):', '',
              '| run | loss first | loss min | loss max | loss last | '
              'max grad norm | kl_push last |', '|---|---|---|---|---|---|---|']
    lines += [_stability_row(n) for n in ciard_runs]
  if ciard_runs:  # issue 9: CIARD's picture, its training curves
    src = os.path.join(_run_dir(ciard_runs[0]), 'eval', reports.CURVES)
    if os.path.exists(src):
      dst = os.path.join(HERE, 'results', f'{FLAGS.out}_ciard_curves.png')
      shutil.copyfile(src, dst)
      lines += ['', f'![training curves of {ciard_runs[0]}]'
                f'({os.path.basename(dst)})']
  with open(os.path.join(HERE, 'results', FLAGS.out + '.json'), 'w') as f:
    json.dump({name: {'accuracy': res['accuracy'], 'cam': cams.get(name),
                      'images_per_sec': _images_per_second(name)}
               for name, res in compared.items()}, f, indent=2)
  out = os.path.join(HERE, 'results', FLAGS.out + '.md')
  with open(out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
