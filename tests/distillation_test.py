"""ARD, IAD, RSLAD, MTARD, AdaAD: losses against numpy, frozen teachers,
MTARD's weights and state, train-mode attacks, and the quick pipelines."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jard import methods
from jard import pipeline
from jard.methods import distillation as dist
from jard.models import resnet
from quick_configs import assert_steps_compiled_once
from quick_configs import quick_image_config

B, C = 6, 10


def _logits(seed, scale=3.0):
  return np.random.default_rng(seed).normal(size=(B, C)).astype(
      np.float32) * scale


def _np_softmax(z, tau=1.0):
  z = np.asarray(z, np.float64) / tau  # float64: an independent reference
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def _np_kl(t, s, tau=1.0):
  """Per-example Σ_c p_t (log p_t − log p_s) at temperature τ."""
  p, q = _np_softmax(t, tau), _np_softmax(s, tau)
  return np.sum(p * (np.log(p) - np.log(q)), 1)


def _np_smoothed_kl(t, s):
  b, q = _np_softmax(t), _np_softmax(s)
  return np.sum(-b * np.log(q) + b * np.log(b + 1e-5), 1)


# float32 KL at τ = 30 (then ×900) carries ~1e-5 relative rounding.
RTOL = 1e-4


def _np_ce(z, y):
  return -np.log(_np_softmax(z)[np.arange(len(y)), y])


T_CLEAN, T_ADV, S_ADV, S_CLEAN = (_logits(i) for i in range(4))
LABELS = np.array([0, 3, 9, 1, 1, 5])


@pytest.mark.parametrize('alpha', [1.0, 0.5])
def test_ard_outer_matches_numpy(alpha):
  got = dist.ard_outer(T_CLEAN, S_ADV, S_CLEAN, LABELS, alpha=alpha,
                       temperature=30.0, num_classes=C)
  # em: τ²·Σ_c KL / (B·C) after the batch mean.
  want = alpha * 900.0 * _np_kl(T_CLEAN, S_ADV, 30.0) / C
  if alpha < 1:
    want += (1 - alpha) * _np_ce(S_CLEAN, LABELS)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  np.testing.assert_allclose(jnp.mean(got), want.sum() / B, rtol=RTOL)


@pytest.mark.parametrize('introspect', [0.0, 1.0])
def test_iad_outer_matches_numpy(introspect):
  got = dist.iad_outer(T_CLEAN, T_ADV, S_ADV, S_CLEAN, LABELS, alpha=1.0,
                       temperature=2.0, beta=0.1, introspect=introspect)
  a = _np_softmax(T_ADV)[np.arange(B), LABELS] ** 0.1
  want = 4.0 * _np_kl(T_CLEAN, S_ADV, 2.0) + introspect * (1 - a) * _np_kl(
      S_CLEAN, S_ADV)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # The introspection target p_S(x) is not detached (IAD-I code); the
  # reliability weight is a constant.
  grad = jax.grad(lambda s: jnp.sum(dist.iad_outer(
      T_CLEAN, T_ADV, S_ADV, s, LABELS, alpha=1.0, temperature=2.0,
      beta=0.1, introspect=1.0)))(jnp.asarray(S_CLEAN))
  assert float(jnp.abs(grad).max()) > 0
  grad_t = jax.grad(lambda t: jnp.sum(dist.iad_outer(
      T_CLEAN, t, S_ADV, S_CLEAN, LABELS, alpha=1.0, temperature=2.0,
      beta=0.1, introspect=1.0)))(jnp.asarray(T_ADV))
  assert float(jnp.abs(grad_t).max()) == 0


def test_rslad_and_mtard_terms_match_numpy():
  got = dist.rslad_outer(T_CLEAN, S_ADV, S_CLEAN)
  want = (5 / 6 * _np_smoothed_kl(T_CLEAN, S_ADV)
          + 1 / 6 * _np_smoothed_kl(T_CLEAN, S_CLEAN)) / 10
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # Σ/(10·B) is em on CIFAR-10: the mean over B×C of the smoothed terms.
  b = _np_softmax(T_CLEAN)
  em = np.mean(-b * np.log(_np_softmax(S_ADV)) + b * np.log(b + 1e-5))
  np.testing.assert_allclose(
      jnp.mean(dist.smoothed_kl(T_CLEAN, S_ADV)) / 10, em, rtol=RTOL)
  np.testing.assert_allclose(dist.rslad_inner(T_CLEAN, S_ADV),
                             _np_kl(T_CLEAN, S_ADV), rtol=RTOL)
  adv, nat = dist.mtard_terms(T_ADV, T_CLEAN, S_ADV, S_CLEAN)
  np.testing.assert_allclose(adv, _np_smoothed_kl(T_ADV, S_ADV) / 10,
                             rtol=RTOL)
  np.testing.assert_allclose(nat, _np_smoothed_kl(T_CLEAN, S_CLEAN) / 10,
                             rtol=RTOL)


@pytest.mark.parametrize('alpha,reduction', [(1.0, 'em'), (0.7, 'bm')])
def test_adaad_outer_and_inner_match_numpy(alpha, reduction):
  scale = 1 / C if reduction == 'em' else 1.0
  got = dist.adaad_outer(T_ADV, T_CLEAN, S_ADV, S_CLEAN, alpha=alpha,
                         scale=scale)
  want = alpha * _np_kl(T_ADV, S_ADV) + (1 - alpha) * _np_kl(T_CLEAN,
                                                             S_CLEAN)
  np.testing.assert_allclose(got, scale * want, rtol=RTOL)
  np.testing.assert_allclose(dist.adaad_inner(T_ADV, S_ADV),
                             _np_kl(T_ADV, S_ADV), rtol=RTOL)


def test_mtard_weights_follow_the_formula_over_three_steps():
  hp = {'gamma': 1.0, 'eta': 0.025, 'eta_boundaries': (2,)}
  state = dist.mtard_init_state(hp, C)
  losses_seq = [(2.0, 1.0), (1.5, 0.5), (1.2, 0.3)]
  epochs = [0, 1, 2]  # the third step is past the boundary: η × 0.1
  w_nat, l0 = 0.5, None
  for (adv, nat), epoch in zip(losses_seq, epochs):
    state = dist.mtard_weights(state, jnp.float32(adv), jnp.float32(nat), hp,
                               jnp.int32(epoch))
    l0 = l0 or (adv, nat)
    r_adv, r_nat = adv / l0[0], nat / l0[1]
    eta = 0.025 * (0.1 if epoch >= 2 else 1.0)
    w_nat = w_nat - eta * (w_nat - r_nat / (r_adv + r_nat))
    np.testing.assert_allclose(float(state['w_nat']), w_nat, rtol=1e-6)
  assert (float(state['loss0_adv']), float(state['loss0_nat'])) == (2.0, 1.0)
  # The natural loss fell more, so the adversarial teacher gains weight.
  assert float(state['w_nat']) < 0.5


# --- The methods in a context --------------------------------------------


def _setup(method_name, *, steps=2, **hp):
  model = resnet.ResNet(stage_sizes=(1,), widths=(8,), num_classes=C)
  teacher_model = resnet.ResNet(stage_sizes=(1,), widths=(4,), num_classes=C)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 3)),
                  jnp.float32)
  y = jnp.arange(8) % C
  s_vars = model.init(jax.random.key(0), x, train=False)
  t_vars = teacher_model.init(jax.random.key(1), x, train=False)
  # Non-trivial running statistics, so BatchNorm modes are distinguishable.
  t_vars = jax.tree.map(lambda v: v + 0.1, t_vars)
  keys = jax.random.split(jax.random.key(2), 8)
  method = methods.get_method(method_name)

  def ctx(teacher_vars, state=None, epoch=0):
    teachers = {name: methods.Teacher(teacher_model, teacher_vars)
                for name in method.teachers}
    return methods.Context(
        model=model, batch_stats=s_vars['batch_stats'], hp=hp,
        attack=methods.AttackSpec(steps=steps, init='U'),
        step=jnp.int32(0), epoch=jnp.int32(epoch),
        state=state if state is not None else (
            method.init_state(hp, C) if method.init_state else {}),
        teachers=teachers, num_classes=C)
  return method, s_vars, t_vars, {'image': x, 'label': y}, keys, ctx


@pytest.mark.parametrize('name', ['ard', 'iad', 'rslad', 'mtard', 'adaad'])
def test_teachers_get_no_gradient_and_students_do(name):
  method, s_vars, t_vars, batch, keys, ctx = _setup(name)
  loss, aux = method.loss(s_vars['params'], batch, keys, ctx(t_vars))
  assert np.isfinite(float(loss)) and float(loss) > 0
  t_grad = jax.grad(lambda tv: method.loss(s_vars['params'], batch, keys,
                                           ctx(tv))[0])(t_vars)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(t_grad))
  s_grad = jax.grad(lambda p: method.loss(p, batch, keys, ctx(t_vars))[0])(
      s_vars['params'])
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(s_grad)) > 0
  assert 'adv_accuracy' in aux['metrics']


def test_ard_attacks_the_student_in_train_mode():
  """ARD's attack runs the student with batch statistics and updates the
  running averages at every step (k attack steps + 1 outer forward)."""
  method, s_vars, t_vars, batch, keys, ctx = _setup('ard', steps=3)
  _, aux = method.loss(s_vars['params'], batch, keys, ctx(t_vars))
  c = ctx(t_vars)
  params = s_vars['params']
  x_adv, stats = dist._train_mode_attack(params, batch, keys, c)  # pylint: disable=protected-access
  _, stats = c.apply(params, x_adv, train=True, batch_stats=stats)
  jax.tree.map(np.testing.assert_allclose, aux['batch_stats'], stats)
  # One outer forward alone would leave different statistics.
  _, once = c.apply(params, x_adv, train=True)
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       aux['batch_stats'], once)
  assert max(jax.tree.leaves(diffs)) > 1e-4


def test_method_losses_equal_their_outer_functions_on_model_logits():
  """With a 0-step attack from x (init none), x' = x and each method's loss
  is its outer function of the models' logits."""
  for name in ('rslad', 'adaad', 'iad'):
    method, s_vars, t_vars, batch, keys, ctx = _setup(name, steps=0)
    c = ctx(t_vars)
    c = methods.Context(**{**c.__dict__, 'attack': methods.AttackSpec(
        steps=0, init='none')})
    loss, _ = method.loss(s_vars['params'], batch, keys, c)
    x, y = batch['image'], batch['label']
    student = c.apply(s_vars['params'], x, train=True)[0].logits
    teacher = c.teachers['robust'](x).logits
    if name == 'rslad':
      want = dist.rslad_outer(teacher, student, student)
    elif name == 'adaad':
      want = dist.adaad_outer(teacher, None, student, None, alpha=1.0,
                              scale=1 / C)
    else:
      want = dist.iad_outer(teacher, teacher, student, student, y, alpha=1.0,
                            temperature=1.0, beta=0.1, introspect=0.0)
    np.testing.assert_allclose(float(loss), float(jnp.mean(want)), rtol=1e-4,
                               err_msg=name)


# --- The quick configs end to end ----------------------------------------


def _quick(name, npz_path, **overrides):
  return quick_image_config(name, 'quick', npz_path, **overrides)


@pytest.mark.parametrize('name', ['ard', 'iad', 'rslad', 'adaad'])
def test_quick_config_runs_teacher_student_eval(name, npz_path, tmp_path):
  results = pipeline.run(_quick(name, npz_path), str(tmp_path / name))
  assert results['last']['step'] == 4
  assert os.path.isdir(tmp_path / name / 'teachers' / 'robust' / 'train')
  assert 0 <= results['last']['accuracy']['pgd20_sat'] <= 1
  assert_steps_compiled_once(str(tmp_path / name), min_runs=2)


def test_mtard_two_teachers_and_state_restored_on_resume(npz_path, tmp_path):
  """MTARD's weights and L⁰ are checkpointed method state: a run stopped
  after 2 steps and resumed ends exactly like an uninterrupted one."""
  from jard import checkpoint  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  full_dir, split_dir = str(tmp_path / 'full'), str(tmp_path / 'split')
  pipeline.run(_quick('mtard', npz_path, stages='teachers,train'), full_dir)
  pipeline.run(_quick('mtard', npz_path, stages='teachers,train'), split_dir,
               stop_at_step=2)
  del checkpoint

  def restore(workdir, step=None):
    with ocp.CheckpointManager(os.path.join(workdir, 'train',
                                            'checkpoints')) as mngr:
      step = mngr.latest_step() if step is None else step
      return step, mngr.restore(step, args=ocp.args.StandardRestore())
  step, state = restore(split_dir)
  assert step == 2 and bool(state['method_state']['started'])
  assert float(state['method_state']['w_nat']) != 0.5
  pipeline.run(_quick('mtard', npz_path, stages='teachers,train'), split_dir)
  _, full = restore(full_dir)
  _, resumed = restore(split_dir)
  jax.tree.map(np.testing.assert_array_equal, full['method_state'],
               resumed['method_state'])
  jax.tree.map(np.testing.assert_array_equal, full['params'],
               resumed['params'])
  for teacher in ('robust', 'natural'):
    assert os.path.isdir(tmp_path / 'full' / 'teachers' / teacher / 'train')
  assert_steps_compiled_once(full_dir, min_runs=3)
  assert_steps_compiled_once(split_dir, min_runs=3)


def test_teacher_variables_are_bit_identical_after_training_steps(
    npz_path, tmp_path):
  """The frozen teachers (params and batch statistics) enter the compiled
  step as arguments and come out untouched; the student moves."""
  from jard import data as data_lib  # pylint: disable=g-import-not-at-top
  from jard import train as train_lib  # pylint: disable=g-import-not-at-top
  config = _quick('iad', npz_path, stages='teachers')
  pipeline.run(config, str(tmp_path))  # trains the teacher
  config = _quick('iad', npz_path, num_train_steps=3)
  ds = data_lib.load('npz:' + npz_path, role='train', field='t',
                     num_classes=10, image_size=32)
  from jard import teachers as teacher_lib  # pylint: disable=g-import-not-at-top
  frozen = teacher_lib.build_teachers(config, str(tmp_path), (32, 32, 3), 10)
  before = jax.tree.map(np.array, frozen['robust'].variables)
  assert jax.tree.leaves(before['batch_stats'])  # BatchNorm stats exist
  model = pipeline.build_model(config, 10)
  state, _ = train_lib.train(config, str(tmp_path / 'student'), model=model,
                             method=methods.get_method('iad'), train_ds=ds,
                             teachers=frozen)
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, frozen['robust'].variables))
  again = teacher_lib.build_teachers(config, str(tmp_path), (32, 32, 3), 10)
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.array, again['robust'].variables))
  assert int(state.step) == 3


def test_distillation_baselines_share_the_teacher_and_compare(npz_path,
                                                              tmp_path):
  """An image config with `baselines` (a PGD-AT student and ARD next to
  RSLAD): one teacher trained once, every student evaluated, and the
  comparison report in the workdir."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = _quick('rslad', npz_path)
  config.baselines.at = ml_collections.ConfigDict(
      {'method': {'name': 'pgd_at'}})
  config.baselines.ard = ml_collections.ConfigDict(
      {'method': {'name': 'ard', 'alpha': 1.0, 'temperature': 30.0}})
  workdir = str(tmp_path / 'run')
  pipeline.run(config, workdir)
  assert os.listdir(os.path.join(workdir, 'teachers')) == ['robust']
  for name in ('at', 'ard'):
    assert os.path.isdir(os.path.join(workdir, 'baselines', name, 'eval'))
  with open(os.path.join(workdir, 'results.json')) as f:
    compared = json.load(f)
  assert len(compared) == 3  # two baselines and the student
  assert_steps_compiled_once(workdir, min_runs=4)
  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  assert 'ard (ard/resnet8)' in report and 'at (pgd_at/resnet8)' in report
  assert 'student (rslad/resnet8)' in report


def test_ard_lr_bug_flag_reproduces_the_one_decay_schedule():
  """Fixed by default (×0.1 at 100 and 150); `:lr_bug` keeps the released
  helper's behaviour (0.01 from epoch 100 on)."""
  from jard import schedules  # pylint: disable=g-import-not-at-top
  for arg, want in (('', [0.1, 0.01, 0.01, 0.001]),
                    ('lr_bug', [0.1, 0.01, 0.01, 0.01])):
    config = importlib.import_module('configs.ard').get_config(arg)
    lr = schedules.make_schedule(
        config.schedule.name, base_lr=config.optimizer.lr, steps_per_epoch=1,
        total_steps=200, cfg=config.schedule.to_dict())
    got = [float(lr(epoch)) for epoch in (99, 100, 149, 150)]
    np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=arg)
