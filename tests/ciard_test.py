"""CIARD: loss terms, temperatures, push and magnitude weight against numpy;
the retrained teacher inside the step; schedules; the quick pipeline with
resume."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jard import losses
from jard import methods
from jard import pipeline
from jard import schedules
from jard.methods import ciard
from jard.models import resnet
import numpy_reference
from quick_configs import assert_steps_compiled_once
from quick_configs import quick_image_config

B, C = 8, 10


def _np_kl_em(p, s_logits, tau_s=1.0):
  q = numpy_reference.softmax(np.asarray(s_logits, np.float64) / tau_s)
  p = np.asarray(p, np.float64)
  return np.mean(p * (np.log(p + 1e-5) - np.log(q)), axis=1)


def test_kl_em_and_entropy_match_numpy():
  rng = np.random.default_rng(0)
  t, s = rng.normal(size=(2, B, C)) * 3
  p = numpy_reference.softmax(t / 2.0)
  np.testing.assert_allclose(ciard.kl_em(jnp.asarray(p, jnp.float32), s),
                             _np_kl_em(p, s), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      ciard.kl_em(jnp.asarray(p, jnp.float32), s, student_temperature=5.0),
      _np_kl_em(p, s, 5.0), rtol=1e-5, atol=1e-7)
  # em = batchmean / C (up to the 1e-5 smoothing).
  kl = losses.distillation_kl(jnp.asarray(t / 2.0), jnp.asarray(s),
                              reduction='bm')
  np.testing.assert_allclose(float(jnp.mean(ciard.kl_em(
      jnp.asarray(p, jnp.float32), s))), float(kl) / C, rtol=1e-3)
  np.testing.assert_allclose(float(ciard.neg_entropy(jnp.asarray(p))),
                             np.mean(p * np.log(p + 1e-5)), rtol=1e-5)


@pytest.mark.parametrize('h_adv,h_nat,want', [
    (-0.2, -0.1, (1.0, 1.001)),   # H_a/H_n > 1: τ_a falls (clipped at 1)
    (-0.1, -0.2, (1.001, 1.0)),
    (-0.1, -0.1, (1.0, 1.0))])
def test_temperature_update_matches_the_rule(h_adv, h_nat, want):
  t_adv, t_nat = ciard.update_temperatures(
      jnp.float32(1.0), jnp.float32(1.0), jnp.float32(h_adv),
      jnp.float32(h_nat), 0.001)
  np.testing.assert_allclose((float(t_adv), float(t_nat)), want, rtol=1e-6)
  t_adv, _ = ciard.update_temperatures(jnp.float32(10.0), jnp.float32(5.0),
                                       jnp.float32(-0.1), jnp.float32(-0.2),
                                       0.5)
  assert float(t_adv) == 10.0  # clipped to [1, 10]


@pytest.mark.parametrize('kls,want', [
    ((0.05, 0.3, 0.002), 10.0 ** (-2 - -3)),
    ((0.5, 0.03, 4.0), 10.0 ** (-2 - 0)),
    ((0.05, 0.3, 0.0), 0.0)])
def test_magnitude_weight(kls, want):
  np.testing.assert_allclose(float(ciard.magnitude_weight(*map(
      jnp.float32, kls))), want, rtol=1e-5)


def test_schedules_match_the_formulas():
  def formula(e, base, start, length):
    if e < start:
      return base
    t = min(e - start, length)
    return base * (0.5 + 0.5 * np.cos(np.pi * t / length)) * np.exp(
        -0.01 * t ** 2 / length ** 2)
  for e in (0, 50, 149, 150, 200, 250, 300):
    np.testing.assert_allclose(float(ciard.student_lr(e)),
                               formula(e, 0.1, 150, 150), rtol=1e-6, atol=0)
    want_t = 0.0 if e < 50 else formula(e, 1e-4, 50, 250)
    np.testing.assert_allclose(float(ciard.teacher_lr(e)), want_t, rtol=1e-5,
                               atol=1e-12)
  # The facts' spot values: 0.0749 at 200, 0.0249 at 250, 0 at 300.
  np.testing.assert_allclose([float(ciard.student_lr(e)) for e in
                              (200, 250, 300)], [0.0749, 0.0249, 0.0],
                             atol=1e-4)
  np.testing.assert_allclose([float(ciard.teacher_lr(e)) for e in
                              (149, 200, 250)], [6.6e-5, 3.4e-5, 9.5e-6],
                             rtol=0.03)
  # The registered student schedule counts epochs from 1, as released.
  lr = schedules.make_schedule('ciard', base_lr=0.1, steps_per_epoch=10,
                               total_steps=3000)
  assert float(lr(1489)) == pytest.approx(float(ciard.student_lr(149)))
  assert float(lr(1490)) == pytest.approx(float(ciard.student_lr(150)))


def test_temperature_rate_decays_once_or_underflows_with_the_bug():
  spe = 391
  at = lambda epoch, i=0, bug=False: float(ciard.temperature_rate(
      jnp.int32((epoch - 1) * spe + i), spe, per_batch_decay_bug=bug))
  assert at(214) == pytest.approx(1e-3)
  assert at(215) == pytest.approx(1e-4)
  assert at(260) == pytest.approx(1e-5)
  assert at(300) == pytest.approx(1e-6)
  assert at(214, bug=True) == pytest.approx(1e-3)
  assert at(215, 0, bug=True) == pytest.approx(1e-4)
  assert at(215, 2, bug=True) == pytest.approx(1e-6)
  assert at(215, 390, bug=True) == 0.0
  assert at(240, bug=True) == 0.0  # frozen for the rest of the run


# --- The method in a context -------------------------------------------------


def _setup(retrain_from_epoch=0, epoch=0, **hp):
  model = resnet.ResNet(stage_sizes=(1,), widths=(8,), num_classes=C)
  robust_model = resnet.ResNet(stage_sizes=(1,), widths=(4,), num_classes=C)
  natural_model = resnet.ResNet(stage_sizes=(1,), widths=(6,), num_classes=C)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(B, 8, 8, 3)),
                  jnp.float32)
  y = jnp.arange(B) % C
  s_vars = model.init(jax.random.key(0), x)
  r_vars = robust_model.init(jax.random.key(1), x)
  n_vars = jax.tree.map(lambda v: v + 0.05,
                        natural_model.init(jax.random.key(2), x))
  keys = jax.random.split(jax.random.key(3), B)
  hp = {'retrain_from_epoch': retrain_from_epoch, **hp}
  teachers = {'robust': methods.Teacher(robust_model, r_vars),
              'natural': methods.Teacher(natural_model, n_vars)}
  state = ciard.ciard_init_state(hp, C, teachers)

  def ctx(state=state, teacher_vars=None):
    frozen = dict(teachers)
    if teacher_vars is not None:
      frozen = {'robust': methods.Teacher(robust_model, teacher_vars[0]),
                'natural': methods.Teacher(natural_model, teacher_vars[1])}
    return methods.Context(
        model=model, batch_stats=s_vars['batch_stats'], hp=hp,
        attack=methods.AttackSpec(steps=2, init='N'),
        step=jnp.int32(epoch * 10), epoch=jnp.int32(epoch), state=state,
        teachers=frozen, num_classes=C, steps_per_epoch=10)
  return s_vars, (r_vars, n_vars), {'image': x, 'label': y}, keys, ctx


def test_loss_is_the_sum_of_independent_terms():
  s_vars, (r_vars, n_vars), batch, keys, ctx = _setup()
  c = ctx()
  params = s_vars['params']
  loss, aux = ciard.ciard_loss(params, batch, keys, c)
  x, y = batch['image'], batch['label']
  logits_fn = c.logits_fn(params)
  x_adv = c.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                       keys, batch)
  clean, stats = c.apply(params, x, train=True)
  adv, _ = c.apply(params, x_adv, train=True, batch_stats=stats)
  # The robust teacher in train mode: batch statistics of x'.
  robust = c.teachers['robust'].model
  r_adv, _ = robust.apply(r_vars, x_adv, train=True, mutable=['batch_stats'])
  n_nat = c.teachers['natural'](x).logits
  n_adv = np.asarray(c.teachers['natural'](x_adv).logits)
  kl1 = _np_kl_em(numpy_reference.softmax(np.asarray(r_adv.logits)),
                  adv.logits)
  kl2 = _np_kl_em(numpy_reference.softmax(np.asarray(n_nat)), clean.logits)
  mask = n_adv.argmax(1) != np.asarray(y)
  assert 0 < mask.sum() < B  # a non-trivial selection on these weights
  kl3 = _np_kl_em(numpy_reference.softmax(n_adv), adv.logits, 5.0)[mask].mean()
  floor = lambda v: np.floor(np.log10(v))
  w3 = 10.0 ** (min(floor(kl1.mean()), floor(kl2.mean())) - floor(kl3))
  want = kl1.mean() + kl2.mean() - w3 * kl3
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)
  m = aux['metrics']
  np.testing.assert_allclose(float(m['kl_push']), kl3, rtol=1e-4)
  np.testing.assert_allclose(float(m['push_weight']), w3, rtol=1e-6)
  assert float(m['push_fraction']) == mask.mean()


def test_push_is_zero_when_the_natural_teacher_is_always_right():
  s_vars, _, batch, keys, ctx = _setup()
  c = ctx()
  n_adv = c.teachers['natural'](batch['image']).logits
  # Labels = the natural teacher's predictions on x' need x'; instead make
  # the mask empty by labelling with its argmax on a 0-step attack.
  c0 = methods.Context(**{**c.__dict__, 'attack': methods.AttackSpec(
      steps=0, init='none')})
  y = jnp.argmax(n_adv, -1)
  batch = {'image': batch['image'], 'label': y}
  np.testing.assert_array_equal(ciard.push_mask(n_adv, y), False)
  loss, aux = ciard.ciard_loss(s_vars['params'], batch, keys, c0)
  assert float(aux['metrics']['kl_push']) == 0.0
  assert float(aux['metrics']['push_weight']) == 0.0
  np.testing.assert_allclose(
      float(loss), float(aux['metrics']['kl_adv'] + aux['metrics']['kl_nat']),
      rtol=1e-6)


def test_push_modes():
  out = {}
  for push in ('subtract', 'bounded', 'off'):
    s_vars, _, batch, keys, ctx = _setup(push=push, push_margin=10.0)
    out[push] = ciard.ciard_loss(s_vars['params'], batch, keys, ctx())
  m = out['subtract'][1]['metrics']
  w3, kl3 = float(m['push_weight']), float(m['kl_push'])
  base = float(out['off'][0])
  np.testing.assert_allclose(float(out['subtract'][0]), base - w3 * kl3,
                             rtol=1e-5)
  np.testing.assert_allclose(float(out['bounded'][0]),
                             base + w3 * max(0.0, 10.0 - kl3), rtol=1e-5)


def test_teacher_frozen_before_retraining_and_one_sgd_step_after():
  for epoch, moves in ((0, False), (3, True)):
    s_vars, (r_vars, _), batch, keys, ctx = _setup(retrain_from_epoch=2,
                                                   epoch=epoch)
    c = ctx()
    _, aux = ciard.ciard_loss(s_vars['params'], batch, keys, c)
    new = aux['method_state']['teacher']['params']
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(new), jax.tree.leaves(r_vars['params'])))
    assert (diff > 0) == moves, (epoch, diff)
    # BatchNorm statistics move in train mode either way.
    assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in zip(
        jax.tree.leaves(aux['method_state']['teacher']['batch_stats']),
        jax.tree.leaves(r_vars['batch_stats'])))
  # After: an independent SGD step on CE(T(x'), y) at lr_T(epoch + 1).
  x, y = batch['image'], batch['label']
  logits_fn = c.logits_fn(s_vars['params'])
  x_adv = c.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                       keys, batch)
  # The statistics the x' pass starts from: after the clean-x pass.
  robust = c.teachers['robust'].model
  _, upd = robust.apply(r_vars, x, train=True, mutable=['batch_stats'])

  def ce(p):
    out, _ = robust.apply({'params': p, 'batch_stats': upd['batch_stats']},
                          x_adv, train=True, mutable=['batch_stats'])
    return jnp.mean(losses.cross_entropy(out.logits, y))
  grads = jax.grad(ce)(r_vars['params'])
  lr = float(ciard.teacher_lr(4, start=2.0))
  want = jax.tree.map(lambda p, g: p - lr * (g + 2e-4 * p), r_vars['params'],
                      grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-9), new, want)


def test_student_update_does_not_depend_on_teacher_retraining():
  grads = []
  for retrain in (True, False):
    s_vars, _, batch, keys, ctx = _setup(retrain=retrain)
    grads.append(jax.grad(lambda p, c=ctx(): ciard.ciard_loss(
        p, batch, keys, c)[0])(s_vars['params']))
  jax.tree.map(np.testing.assert_array_equal, *grads)
  # The student loss gives the teachers no gradient.
  s_vars, teacher_vars, batch, keys, ctx = _setup()
  t_grad = jax.grad(lambda tv: ciard.ciard_loss(
      s_vars['params'], batch, keys, ctx(teacher_vars=tv))[0])(teacher_vars)
  assert all(float(jnp.max(jnp.abs(g))) == 0
             for g in jax.tree.leaves(t_grad))


# --- The quick pipeline and devices ------------------------------------------


def test_quick_runs_and_resumes_teacher_state_exactly(npz_path, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  results = pipeline.run(quick_image_config(
      'ciard', 'quick', npz_path,
      **{'eval.attacks': 'clean,pgd20_sat,square100'}), full)
  assert results['last']['step'] == 4
  assert 'transfer_pgd20_trades' in results['last']['accuracy']
  assert 'square100' in results['last']['accuracy']
  assert_steps_compiled_once(full, min_runs=3)
  # The split run distils from the full run's teachers (checkpoints, as a
  # user would give them), so only the student's training is repeated.
  teachers = {f'teachers.{name}.checkpoint': os.path.join(full, 'teachers',
                                                          name)
              for name in ('natural', 'robust')}
  config = quick_image_config('ciard', 'quick', npz_path, stages='train',
                              **teachers)
  pipeline.run(config, split, stop_at_step=2)
  pipeline.run(config, split)

  def state(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, 'train',
                                            'checkpoints')) as mngr:
      return mngr.restore(4, args=ocp.args.StandardRestore())
  a, b = state(full), state(split)
  jax.tree.map(np.testing.assert_array_equal, a['method_state'],
               b['method_state'])
  jax.tree.map(np.testing.assert_array_equal, a['params'], b['params'])
  # The teacher was retrained (quick: from epoch 0) and the temperatures
  # moved.
  moved = [float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
           zip(jax.tree.leaves(a['method_state']['teacher']['params']),
               jax.tree.leaves(state(os.path.join(full, 'teachers',
                                                  'robust'))['params']))]
  assert max(moved) > 0


def test_config_has_the_released_recipe_and_selects_on_a_holdout():
  from configs import ciard as cfg  # pylint: disable=g-import-not-at-top
  config = cfg.get_config()
  assert (config.model.name, config.teachers.robust.model.name,
          config.teachers.natural.model.name) == ('mobilenet_v2', 'wrn34_10',
                                                  'resnet56')
  assert (config.num_epochs, config.batch_size, config.schedule.name,
          config.optimizer.weight_decay) == (300, 128, 'ciard', 2e-4)
  assert (config.method.push, config.method.weights, config.method.teacher_bn,
          config.method.retrain_from_epoch) == ('subtract', 'fixed', 'train',
                                                50)
  # Never on the test set: 1,000 training images are held out.
  assert config.dataset.holdout == 1000 and config.select.metric
  assert 'square100' in config.eval.attacks
  assert config.eval.transfer.checkpoint == 'teacher:robust'
  assert cfg.get_config('resnet18').model.name == 'resnet18'
  assert cfg.get_config('per_batch_decay_bug').method.per_batch_decay_bug


def _run_steps(num_devices, num_steps=2):
  """`num_steps` CIARD steps (teacher retrained from epoch 0) on devices."""
  import optax  # pylint: disable=g-import-not-at-top
  from jard import parallel  # pylint: disable=g-import-not-at-top
  from jard import train as train_lib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:num_devices]
  model = resnet.ResNet(stage_sizes=(1,), widths=(8,), num_classes=C,
                        bn_axis_name=parallel.AXIS)
  robust = resnet.ResNet(stage_sizes=(1,), widths=(4,), num_classes=C)
  natural = resnet.ResNet(stage_sizes=(1,), widths=(6,), num_classes=C)
  x0 = jnp.zeros((1, 8, 8, 3))
  teachers = {
      'robust': methods.Teacher(robust, robust.init(jax.random.key(1), x0)),
      'natural': methods.Teacher(natural, natural.init(jax.random.key(2),
                                                       x0))}
  hp = {'retrain_from_epoch': 0, 'teacher_lr': 0.05}
  tx = optax.sgd(0.1, momentum=0.9)
  method = methods.get_method('ciard')
  state = train_lib.create_train_state(model, tx, method, jax.random.key(0),
                                       (8, 8, 3), hp=hp, num_classes=C,
                                       teachers=teachers)
  step_fn = train_lib.make_train_step(
      model=model, method=method, tx=tx, hp=hp,
      attack=methods.AttackSpec(steps=2, init='N'), steps_per_epoch=10,
      num_classes=C, teachers=teachers)
  compiled = parallel.compile_spmd(step_fn, mode='pmap',
                                   sharded_in=(False, True, False, False),
                                   sharded_out=False, devices=devices)
  state = parallel.replicate(state, devices)
  t_vars = parallel.replicate({n: t.variables for n, t in teachers.items()},
                              devices)
  rng = np.random.default_rng(0)
  for _ in range(num_steps):
    batch = {'image': rng.integers(0, 256, (16, 8, 8, 3), np.uint8),
             'label': rng.integers(0, C, (16,)).astype(np.int32)}
    state, _ = compiled(state, parallel.shard_batch(batch, 'pmap', devices),
                        jax.random.key(3), t_vars)
  return jax.device_get(state)


def test_one_and_eight_devices_agree_including_the_teacher_state():
  one, eight = _run_steps(1), _run_steps(8)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jax.tree.map(close, one.params, eight.params)
  jax.tree.map(close, one.method_state, eight.method_state)
  moved = [float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(one.method_state['teacher']['params']),
      jax.tree.leaves(_run_steps(1, 0).method_state['teacher']['params']))]
  assert max(moved) > 1e-6
