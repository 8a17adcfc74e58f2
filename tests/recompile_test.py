"""No method's train step compiles again or copies implicitly after step 1.

Each method runs its own `configs/<m>.py:quick` recipe (tiny random-init
teachers, 3 steps on 8 devices) through `train.train`, here or, for the
methods in `ELSEWHERE`, in its end-to-end pipeline test; the loop's
`step_compiles_after_first` counts the programs JAX lowers during steps 2
and 3. A weak-typed or reshaped leaf in the state, a Python scalar that
changes per step, or a method state whose structure changes would each make
it non-zero. The same runs check that steps 2 and 3 make no implicit
transfer (`train.STEP_TRANSFER_GUARD`): the batch's explicit `device_put` is
the only copy between host and devices inside the loop.
"""

import importlib

import jax
import numpy as np
import pytest
import quick_configs

from jard import methods
from jard import parallel
from jard import pipeline
from jard import teachers as teacher_lib
from jard import train

# method -> (config module, variant) whose recipe it trains with.
CONFIGS = {'smaraad_pp': ('smaraad', 'plus:quick')}
RADIO = ('atard',)


def _config(method, npz_path):
  module, variant = CONFIGS.get(method, (method, 'quick'))
  if method in RADIO:
    config = importlib.import_module(f'configs.{module}').get_config(variant)
  else:
    config = quick_configs.quick_image_config(module, variant, npz_path)
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 100
  config.batch_size = 16
  return config


# Methods whose end-to-end test checks the same on its whole pipeline run
# (teachers, student, baselines: `quick_configs.assert_steps_compiled_once`),
# so this file does not compile them a second time.
ELSEWHERE = {
    'adaad': 'distillation_test::test_quick_config_runs_teacher_student_eval',
    'ader': 'ader_test::test_quick_runs_end_to_end_and_draws_the_attention_grid',
    'ard': 'distillation_test::test_quick_config_runs_teacher_student_eval',
    'atard': 'atard_test::test_atard_quick_pipeline_end_to_end',
    'ciard': 'ciard_test::test_quick_runs_and_resumes_teacher_state_exactly',
    'iad': 'distillation_test::test_quick_config_runs_teacher_student_eval',
    'mtard': 'distillation_test::test_mtard_two_teachers_and_state_restored_'
             'on_resume',
    'pgd_at': 'pipeline_test::test_main_runs_quick_config_under_mock_tfds',
    'rslad': 'distillation_test::test_quick_config_runs_teacher_student_eval',
    'smaraad': 'smaraad_test::test_quick_runs_end_to_end_and_resumes',
    'smaraad_pp': 'smaraad_test::test_quick_runs_end_to_end_and_resumes',
}


def test_every_method_is_checked_somewhere():
  assert set(ELSEWHERE) < set(methods.METHODS)
  here = set(methods.METHODS) - set(ELSEWHERE)
  assert here == {'mart', 'natural', 'trades'}, here


@pytest.mark.parametrize('method',
                         sorted(set(methods.METHODS) - set(ELSEWHERE)))
def test_no_recompile_after_the_first_step(method, npz_path, tmp_path):
  assert train.STEP_TRANSFER_GUARD == 'disallow'
  config = _config(method, npz_path)
  assert config.method.name == method
  train_ds, _, _ = pipeline.load_datasets(config, str(tmp_path / 'data'))
  example_shape = train_ds.images.shape[1:]
  _, stats = train.train(
      config, str(tmp_path / 'train'),
      model=pipeline.build_model(config, train_ds.num_classes),
      method=methods.get_method(method), train_ds=train_ds,
      teachers=teacher_lib.random_teachers(config, example_shape,
                                           train_ds.num_classes))
  assert jax.device_count() == 8
  assert stats['step_compiles_after_first'] == 0


def test_an_implicit_copy_inside_the_loop_is_refused(npz_path, tmp_path,
                                                  monkeypatch):
  """The guard could not pass vacuously: an implicit copy in step 2 fails."""
  shard_batch = parallel.shard_batch

  def copying_shard_batch(batch, *args, **kwargs):
    # What passing a per-step numpy value into the step would do.
    jax.numpy.asarray(np.float32(0.1))
    return shard_batch(batch, *args, **kwargs)

  monkeypatch.setattr(parallel, 'shard_batch', copying_shard_batch)
  config = _config('natural', npz_path)
  train_ds, _, _ = pipeline.load_datasets(config, str(tmp_path / 'data'))
  with pytest.raises(Exception, match='Disallowed host-to-device'):
    train.train(config, str(tmp_path / 'train'),
                model=pipeline.build_model(config, train_ds.num_classes),
                method=methods.get_method('natural'), train_ds=train_ds)


def test_the_counter_sees_a_recompile():
  """The check above could not pass vacuously: a new shape is counted."""
  step = jax.jit(lambda x: x * 2)
  counter = parallel.CompileCounter()
  step(jax.numpy.ones(3))
  with counter:
    step(jax.numpy.ones(3))
  assert counter.count == 0
  with counter:
    step(jax.numpy.ones(5))
  counter.close()
  assert counter.count >= 1
