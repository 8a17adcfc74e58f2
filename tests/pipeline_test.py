"""End to end: the CLI under mock TFDS, npz runs, resume, NaN guard, skips."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from configs import pgd_at
from jard import methods
from jard import pipeline
from jard import train as train_lib
from jard.methods import standard
from quick_configs import apply_overrides
from quick_configs import assert_steps_compiled_once
from quick_configs import linked_pngs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quick_config(npz_path, **overrides):
  config = pgd_at.get_config('quick')
  config.dataset.train = config.dataset.test = 'npz:' + npz_path
  # The full protocol (AutoAttack, the ε curve) runs in the main-command test.
  config.eval.autoattack.version = ''
  config.eval.curve_epsilons = ''
  return apply_overrides(config, **overrides)


def _restore_raw(directory, step=None):
  """The saved TrainState of a stage as a plain pytree of numpy arrays."""
  with ocp.CheckpointManager(os.path.join(directory, 'checkpoints')) as mngr:
    step = mngr.latest_step() if step is None else step
    return step, mngr.restore(step, args=ocp.args.StandardRestore())


def test_main_runs_quick_config_under_mock_tfds(tmp_path, monkeypatch):
  import main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  argv = ['main.py', f'--config={REPO}/configs/pgd_at.py:quick',
          f'--workdir={workdir}', '--config.eval.num_examples=48',
          '--config.eval.batch_size=16']
  # config_flags reads `--config.a.b=v` overrides from sys.argv.
  monkeypatch.setattr('sys.argv', argv)
  main.FLAGS.unparse_flags()
  main.FLAGS(argv)
  with tfds.testing.mock_data(num_examples=64):
    main.main(['main.py'])
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['method']['name'] == 'pgd_at'
  assert_steps_compiled_once(workdir)
  assert saved['eval']['num_examples'] == 48
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    results = json.load(f)
  accuracy = results['last']['accuracy']
  assert accuracy['num_examples'] == 48  # 3 batches, nothing dropped.
  for name in ('clean', 'fgsm', 'pgd20_sat', 'pgd20_trades', 'cw_inf',
               'worst_case'):
    assert 0.0 <= accuracy[name] <= 1.0
  assert accuracy['worst_case'] <= min(accuracy['clean'], accuracy['cw_inf'])
  # The full protocol: AutoAttack after the suite, the ε curve, and
  # report.md with accuracy and seconds per attack and the linked PNG.
  summary = results['last']
  assert accuracy['autoattack'] <= accuracy['clean']
  aa = summary['autoattack']
  assert aa['order'] == ['clean', 'apgd-ce', 'apgd-t', 'fab-t',
                                  'square']
  assert aa['robust_accuracy'] == accuracy['autoattack']
  assert aa['num_examples'] == 48 and aa['settings']['n_queries'] == 50
  assert summary['curve']['epsilons'] == [4 / 255, 8 / 255]
  assert set(summary['seconds']) >= {'clean', 'fgsm', 'cw_inf', 'autoattack'}
  # AutoAttack kept its progress, so a killed eval stage would resume it.
  progress = [f for f in os.listdir(os.path.join(workdir, 'eval'))
              if f.startswith('autoattack_progress_last_')]
  assert len(progress) == 1, progress
  with np.load(os.path.join(workdir, 'eval', progress[0]),
               allow_pickle=False) as saved:
    assert int(saved['stage']) == 4  # all four attacks finished
  with open(os.path.join(workdir, 'eval', 'report.md')) as f:
    report = f.read()
  assert '| cw_inf |' in report and '| after | robust accuracy (%) |' in report
  assert 'reduced settings' in report  # quick's AutoAttack says so
  linked_pngs(os.path.join(workdir, 'eval', 'report.md'),
              'robust_accuracy_vs_eps.png', 'training_curves.png')
  assert os.path.exists(os.path.join(workdir, 'train', 'metrics.jsonl'))
  assert any(f.startswith('events.out.tfevents')
             for f in os.listdir(os.path.join(workdir, 'train')))
  main.FLAGS.unparse_flags()


def test_npz_run_then_rerun_skips_completed_stages(npz_path, tmp_path):
  config = _quick_config(npz_path, **{'eval.attacks': 'clean,pgd20_sat',
                                      'eval.num_examples': 40,
                                      'eval.batch_size': 16})
  workdir = str(tmp_path / 'run')
  results = pipeline.run(config, workdir)
  assert results['last']['step'] == 4
  assert results['last']['accuracy']['num_examples'] == 40
  step, state = _restore_raw(os.path.join(workdir, 'train'))
  assert step == 4 and int(state['step']) == 4
  # Completed stages are skipped: no training or evaluation happens again.
  calls = []
  original = train_lib.train
  try:
    train_lib.train = lambda *a, **k: calls.append(1)
    again = pipeline.run(config, workdir)
  finally:
    train_lib.train = original
  assert not calls
  assert again == json.loads(json.dumps(results))


def test_interrupted_run_resumes_to_identical_parameters(npz_path, tmp_path):
  # 96 examples / batch 32: 3 steps per epoch, so the run crosses an epoch
  # boundary after the interruption (new shuffle, selection eval, save).
  overrides = {'stages': 'train', 'num_train_steps': 5}
  full_dir, resumed_dir = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  pipeline.run(_quick_config(npz_path, **overrides), full_dir)
  pipeline.run(_quick_config(npz_path, **overrides), resumed_dir,
               stop_at_step=2)
  step, _ = _restore_raw(os.path.join(resumed_dir, 'train'))
  assert step == 2
  assert not os.path.exists(os.path.join(resumed_dir, 'train', 'COMPLETE'))
  pipeline.run(_quick_config(npz_path, **overrides), resumed_dir)
  _, full = _restore_raw(os.path.join(full_dir, 'train'))
  _, resumed = _restore_raw(os.path.join(resumed_dir, 'train'))
  assert int(full['step']) == int(resumed['step']) == 5
  jax.tree.map(np.testing.assert_array_equal, resumed, full)
  # And the run trained at all: step 4 and step 5 parameters differ.
  _, step4 = _restore_raw(os.path.join(full_dir, 'train'), step=4)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)),
                                       step4['params'], full['params']))
  assert max(moved) > 0
  # A rerun whose config record changed finds the training finished and
  # takes no step; the throughput of the run that trained is kept.
  stats_path = os.path.join(full_dir, 'train', 'train_stats.json')
  with open(stats_path) as f:
    trained = json.load(f)
  assert trained['train_images'] == 4 * 32  # the first step is not timed
  pipeline.run(_quick_config(npz_path, **overrides, log_every_steps=1),
               full_dir)
  with open(stats_path) as f:
    assert json.load(f) == trained


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(npz_path,
                                                             tmp_path):
  def nan_after_two_steps(params, batch, keys, ctx):
    loss, aux = standard.natural_loss(params, batch, keys, ctx)
    return loss * jax.numpy.where(ctx.step >= 2, np.nan, 1.0), aux

  methods.METHODS['_nan_test'] = methods.Method('_nan_test',
                                                nan_after_two_steps)
  try:
    config = _quick_config(npz_path, **{'stages': 'train',
                                        'method.name': '_nan_test',
                                        'log_every_steps': 1,
                                        'num_train_steps': 6})
    workdir = str(tmp_path / 'nan')
    with pytest.raises(train_lib.NonFiniteLossError,
                       match=r'Non-finite .* steps 2 and 3.*step 2'):
      pipeline.run(config, workdir)
  finally:
    del methods.METHODS['_nan_test']
  step, state = _restore_raw(os.path.join(workdir, 'train'))
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state['params']))


def test_evaluate_config_evaluates_a_checkpoint_with_transfer(npz_path,
                                                               tmp_path):
  """`configs/evaluate.py --config.checkpoint=<run>`: model and test set from
  the run's config.json; a transfer attack crafted on the model itself is
  exactly the white-box attack."""
  import importlib  # pylint: disable=g-import-not-at-top
  run_dir = str(tmp_path / 'run')
  pipeline.run(_quick_config(npz_path, stages='train'), run_dir)
  config = importlib.import_module('configs.evaluate').get_config('quick')
  config.checkpoint = run_dir
  config.eval.attacks = 'clean,pgd20_sat,cw_inf,square20'
  config.eval.num_examples = 32
  config.eval.checkpoints = 'last'
  config.eval.autoattack.version = ''
  config.eval.transfer.checkpoint = run_dir
  config.eval.transfer.model.name = 'resnet8'
  config.eval.transfer.which = 'last'
  eval_dir = str(tmp_path / 'evaluation')
  results = pipeline.run(config, eval_dir)
  accuracy = results['last']['accuracy']
  assert results['last']['step'] == 4 and accuracy['num_examples'] == 32
  assert accuracy['transfer_pgd20_sat'] == accuracy['pgd20_sat']
  assert accuracy['transfer_cw_inf'] == accuracy['cw_inf']
  assert accuracy['square20'] <= accuracy['clean']
  with open(os.path.join(eval_dir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['name'] == 'resnet8'
  assert saved['dataset']['test'] == 'npz:' + npz_path
  with open(os.path.join(eval_dir, 'report.md')) as f:
    report = f.read()
  assert '| transfer_cw_inf |' in report and '| square20 |' in report
  # A path without checkpoints: one clear error.
  config.checkpoint = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='config.checkpoint'):
    pipeline.run(config, eval_dir)
