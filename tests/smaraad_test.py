"""SmaraAD / SmaraAD++: soft-rank Spearman, CAM alignment, Eq. 9 and 10
against independent numpy, the method in a context, and the quick pipelines
with resume."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jard import cam_report
from jard import losses
from jard import methods
from jard import pipeline
from jard import reports
from jard.losses import cam as cam_lib
from jard.losses import spearman
from jard.methods import smaraad
from jard.models import resnet
import numpy_reference
from quick_configs import assert_steps_compiled_once
from quick_configs import linked_pngs
from quick_configs import quick_image_config

B, C = 6, 10


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_soft_rank(u, gamma):
  """Σ_j σ(γ (u_j − u_i)) with explicit loops over i and j (float64)."""
  u = np.asarray(u, np.float64)
  out = np.zeros_like(u)
  for i in range(u.shape[-1]):
    for j in range(u.shape[-1]):
      out[..., i] += 1.0 / (1.0 + np.exp(-gamma * (u[..., j] - u[..., i])))
  return out


def _np_rho(u, v, gamma):
  n = u.shape[-1]
  d = _np_soft_rank(u, gamma) - _np_soft_rank(v, gamma)
  return 1.0 - 6.0 * np.sum(d ** 2, -1) / (n * (n * n - 1))


# --- Soft rank and Spearman ----------------------------------------------


def test_soft_rank_tends_to_the_hard_rank_as_gamma_grows():
  u = np.random.default_rng(0).normal(size=(B, C)).astype(np.float32)
  hard = np.asarray(spearman.hard_rank(jnp.asarray(u)))
  # Distinct values: the hard rank is a permutation of 0.5, 1.5, ... (desc).
  for row_u, row in zip(u, hard):
    np.testing.assert_array_equal(
        row, stats.rankdata(-row_u, method='average') - 0.5)
  errors = [float(np.max(np.abs(spearman.soft_rank(jnp.asarray(u), gamma=g)
                                - hard))) for g in (1.0, 10.0, 100.0, 1e4)]
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-3
  np.testing.assert_allclose(spearman.soft_rank(jnp.asarray(u), gamma=3.0),
                             _np_soft_rank(u, 3.0), rtol=1e-5)
  # Ties get their mid-rank, the limit of σ(0) = 1/2.
  np.testing.assert_array_equal(
      spearman.hard_rank(jnp.asarray([3.0, 1.0, 3.0, 2.0])),
      [1.0, 3.5, 1.0, 2.5])


def test_soft_spearman_tends_to_scipy_and_is_exact_at_the_extremes():
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(2, B, C)).astype(np.float32)
  want = np.array([stats.spearmanr(a, b).statistic for a, b in zip(u, v)])
  np.testing.assert_allclose(spearman.hard_spearman(u, v), want, atol=1e-6)
  np.testing.assert_allclose(spearman.soft_spearman(u, v, gamma=1e4), want,
                             atol=1e-3)
  np.testing.assert_allclose(spearman.soft_spearman(u, v, gamma=2.0),
                             _np_rho(u, v, 2.0), rtol=1e-5)
  for gamma in (1.0, 1000.0):  # ρ(u, u) = 1 for every γ
    np.testing.assert_allclose(spearman.soft_spearman(u, u, gamma=gamma),
                               np.ones(B), atol=1e-6)
  np.testing.assert_allclose(spearman.hard_spearman(u, -u), -np.ones(B),
                             atol=1e-6)
  np.testing.assert_allclose(spearman.soft_spearman(u, -u, gamma=1e4),
                             -np.ones(B), atol=1e-3)


def test_slack_matching_has_finite_nonzero_gradients_at_gamma_1000():
  rng = np.random.default_rng(2)
  s_logits, t_logits = (jnp.asarray(rng.normal(size=(B, C)) * 3, jnp.float32)
                        for _ in range(2))

  def loss(s, t):
    return jnp.mean(spearman.slack_matching_loss(
        jax.nn.softmax(s), jax.nn.softmax(t), gamma=1000.0))
  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(s_logits, t_logits)
  assert np.all(np.isfinite(grad_s))
  assert np.all(np.abs(grad_s).sum(-1) > 0)  # every example gets a gradient
  assert float(jnp.max(jnp.abs(grad_t))) == 0  # the teacher side is stopped
  # Self-learning (SmaraAD++): both sides trainable.
  grad_t = jax.grad(lambda t: jnp.mean(spearman.slack_matching_loss(
      jax.nn.softmax(s_logits), jax.nn.softmax(t), gamma=1000.0,
      stop_target=False)))(t_logits)
  assert float(jnp.max(jnp.abs(grad_t))) > 0


def test_spearman_is_per_example_independent_of_batch_composition():
  rng = np.random.default_rng(3)
  p, q = (jax.nn.softmax(jnp.asarray(rng.normal(size=(8, C)), jnp.float32))
          for _ in range(2))
  full = spearman.soft_spearman(p, q, gamma=1000.0)
  perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
  np.testing.assert_array_equal(
      spearman.soft_spearman(p[perm], q[perm], gamma=1000.0), full[perm])
  np.testing.assert_array_equal(
      spearman.soft_spearman(p[:3], q[:3], gamma=1000.0), full[:3])
  vmapped = jax.vmap(lambda a, b: spearman.soft_spearman(a, b, gamma=1000.0))
  np.testing.assert_allclose(vmapped(p, q), full, rtol=1e-6)


# --- CAM ------------------------------------------------------------------


def _small_cnn(width=8, stages=(1, 1)):
  return resnet.ResNet(stage_sizes=stages, widths=(width,) * len(stages),
                       num_classes=C)


def test_cam_equals_grad_cam_on_a_gap_dense_model():
  """Grad-CAM: channel weights = spatial mean of ∂logit_c/∂A (by jax.grad),
  ReLU(Σ_k w_k A_k), normalised; equal to the normalised CAM."""
  model = _small_cnn()
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(4, 16, 16, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(0), x)
  features = model.apply(variables, x).features  # [4, 8, 8, 8]
  labels = jnp.array([0, 3, 7, 9])
  head = nn.Dense(C)

  def logit(a, c):  # one example's head on its feature map [H, W, K]
    return head.apply({'params': variables['params']['head']},
                      jnp.mean(a, axis=(0, 1)))[c]
  grads = jax.vmap(jax.grad(logit))(features, labels)
  weights = jnp.mean(grads, axis=(1, 2))  # [B, K]
  grad_cam = jnp.einsum('bhwk,bk->bhw', features, weights)
  kernel = cam_lib.head_kernel(variables['params'])
  # Before normalisation the maps differ by exactly the factor 1/(HW).
  np.testing.assert_allclose(
      grad_cam * 64, cam_lib.class_activation_map(features, kernel, labels),
      rtol=1e-5, atol=1e-6)
  cam = cam_lib.normalized_cam(features, kernel, labels)
  # After it they agree up to the 1e-7 stabiliser of the denominator, which
  # acts on maxima ~64× smaller for Grad-CAM (relative error ≲ 1e-7 / max).
  bound = 2e-7 / float(jnp.min(jnp.max(jax.nn.relu(grad_cam), (1, 2))))
  np.testing.assert_allclose(cam, cam_lib.normalize_cam(grad_cam),
                             atol=max(bound, 1e-6))
  assert cam.shape == (4, 8, 8)
  np.testing.assert_allclose(jnp.max(cam, axis=(1, 2)), 1.0, atol=1e-5)
  np.testing.assert_allclose(jnp.min(cam, axis=(1, 2)), 0.0, atol=1e-7)


@pytest.mark.parametrize('student_size,teacher_size', [(4, 8), (8, 4)])
def test_cam_alignment_resizes_to_the_larger_map(student_size, teacher_size):
  rng = np.random.default_rng(5)
  s = cam_lib.normalize_cam(jnp.asarray(
      rng.normal(size=(B, student_size, student_size)), jnp.float32))
  t = cam_lib.normalize_cam(jnp.asarray(
      rng.normal(size=(B, teacher_size, teacher_size)), jnp.float32))
  up = lambda m: (numpy_reference.bilinear(m, (8, 8)) if m.shape[-1] == 4
                  else np.asarray(m, np.float64))
  want = np.mean((up(t) - up(s)) ** 2, axis=(1, 2))
  got = cam_lib.cam_alignment(s, t)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The teacher map is a constant; the student's gets the gradient.
  g_s, g_t = jax.grad(lambda a, b: jnp.sum(cam_lib.cam_alignment(a, b)),
                      argnums=(0, 1))(s, t)
  assert float(jnp.max(jnp.abs(g_t))) == 0 and float(
      jnp.max(jnp.abs(g_s))) > 0


def test_head_kernel_error_names_the_fix():
  with pytest.raises(ValueError, match='Dense head named "head"'):
    cam_lib.head_kernel({'classifier': {'kernel': jnp.zeros((2, 2))}})


# --- Eq. 9 and Eq. 10 against numpy ----------------------------------------


def _fixed_inputs(seed=6):
  rng = np.random.default_rng(seed)
  logits = {k: (rng.normal(size=(B, C)) * 3).astype(np.float32)
            for k in ('t_adv', 's_adv', 't_clean', 's_clean')}
  cams = {'t': rng.uniform(size=(B, 8, 8)).astype(np.float32),
          's': rng.uniform(size=(B, 4, 4)).astype(np.float32),
          't_clean': rng.uniform(size=(B, 8, 8)).astype(np.float32),
          's_clean': rng.uniform(size=(B, 4, 4)).astype(np.float32)}
  labels = rng.integers(0, C, size=B)
  return logits, cams, labels


def _np_terms(t_logits, t_cam, s_logits, s_cam, gamma):
  rho = _np_rho(_np_softmax(s_logits), _np_softmax(t_logits), gamma)
  resized = numpy_reference.bilinear(s_cam, t_cam.shape[1:])
  align = np.mean((np.asarray(t_cam, np.float64) - resized) ** 2, axis=(1, 2))
  return -rho + align


@pytest.mark.parametrize('alpha', [1.0, 0.7])
def test_eq9_matches_numpy(alpha):
  lg, cams, _ = _fixed_inputs()
  gamma, c = 50.0, 2.0  # γ small enough that float32 soft ranks are smooth
  adv = smaraad.smaraad_terms(lg['t_adv'], cams['t'], lg['s_adv'], cams['s'],
                              gamma=gamma)
  clean = smaraad.smaraad_terms(lg['t_clean'], cams['t_clean'], lg['s_clean'],
                                cams['s_clean'], gamma=gamma)
  got = smaraad.smaraad_outer(adv, clean, c=c, alpha=alpha)
  want = (c + alpha * _np_terms(lg['t_adv'], cams['t'], lg['s_adv'],
                                cams['s'], gamma)
          + (1 - alpha) * _np_terms(lg['t_clean'], cams['t_clean'],
                                    lg['s_clean'], cams['s_clean'], gamma))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_eq10_matches_numpy():
  lg, cams, y = _fixed_inputs(7)
  gamma, c, lam = 50.0, 2.0, 0.1
  eq9 = smaraad.smaraad_outer(
      smaraad.smaraad_terms(lg['t_adv'], cams['t'], lg['s_adv'], cams['s'],
                            gamma=gamma), None, c=c, alpha=1.0)
  conf, weight = smaraad.teacher_reliability(lg['t_adv'], jnp.asarray(y),
                                             lam=lam)
  got = smaraad.smaraad_pp_outer(eq9, lg['s_clean'], lg['s_adv'],
                                 jnp.asarray(y), conf, weight, gamma=gamma)
  p_t = _np_softmax(lg['t_adv'])
  a = p_t[np.arange(B), y] ** lam
  w = np.clip(1 + np.sum(p_t * np.log(p_t), 1) / np.log(C), 0, 1)
  eq9_np = c + _np_terms(lg['t_adv'], cams['t'], lg['s_adv'], cams['s'],
                         gamma)
  p_clean = _np_softmax(lg['s_clean'])
  self_learning = (-_np_rho(p_clean, _np_softmax(lg['s_adv']), gamma)
                   - np.log(p_clean[np.arange(B), y]))
  want = a * w * eq9_np + (1 - a) * self_learning
  np.testing.assert_allclose(conf, a, rtol=1e-5)
  np.testing.assert_allclose(weight, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_inner_objective_matches_numpy():
  lg, cams, _ = _fixed_inputs(8)
  got = smaraad.smaraad_inner(lg['t_adv'], cams['t'], lg['s_adv'], cams['s'])
  p, q = _np_softmax(lg['t_adv']), _np_softmax(lg['s_adv'])
  kl = np.sum(p * (np.log(p) - np.log(q)), 1)  # bm: summed over classes
  resized = numpy_reference.bilinear(cams['s'], (8, 8))
  align = np.mean((cams['t'] - resized) ** 2, (1, 2))
  np.testing.assert_allclose(got, kl + align, rtol=1e-5)


# --- The methods in a context -----------------------------------------------


def _setup(name, steps=2, **hp):
  model = _small_cnn(8, (1, 1))    # 4×4 maps on 8×8 inputs
  teacher_model = _small_cnn(4, (1,))  # 8×8 maps
  x = jnp.asarray(np.random.default_rng(9).uniform(size=(8, 8, 8, 3)),
                  jnp.float32)
  y = jnp.arange(8) % C
  s_vars = model.init(jax.random.key(0), x)
  t_vars = jax.tree.map(lambda v: v + 0.1,
                        teacher_model.init(jax.random.key(1), x))
  keys = jax.random.split(jax.random.key(2), 8)
  method = methods.get_method(name)
  hp = {'gamma': 1000.0, 'c': 2.0, 'alpha': 1.0, 'lam': 0.1, **hp}

  def ctx(teacher_vars, attack=None):
    return methods.Context(
        model=model, batch_stats=s_vars['batch_stats'], hp=hp,
        attack=attack or methods.AttackSpec(steps=steps, init='N'),
        step=jnp.int32(0), epoch=jnp.int32(0),
        teachers={'robust': methods.Teacher(teacher_model, teacher_vars)},
        num_classes=C)
  return method, s_vars, t_vars, {'image': x, 'label': y}, keys, ctx


@pytest.mark.parametrize('name', ['smaraad', 'smaraad_pp'])
def test_teacher_gets_no_gradient_and_the_student_does(name):
  method, s_vars, t_vars, batch, keys, ctx = _setup(name)
  loss, aux = method.loss(s_vars['params'], batch, keys, ctx(t_vars))
  assert np.isfinite(float(loss))
  t_grad = jax.grad(lambda tv: method.loss(s_vars['params'], batch, keys,
                                           ctx(tv))[0])(t_vars)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(t_grad))
  s_grad = jax.grad(lambda p: method.loss(p, batch, keys, ctx(t_vars))[0])(
      s_vars['params'])
  # The CAM term reaches the head kernel, the Spearman term the features.
  assert float(jnp.max(jnp.abs(s_grad['head']['kernel']))) > 0
  assert float(jnp.max(jnp.abs(s_grad['stem_conv']['kernel']))) > 0
  assert {'adv_accuracy', 'adv_spearman', 'adv_cam_mse'} <= set(
      aux['metrics'])


@pytest.mark.parametrize('name,alpha', [('smaraad', 1.0), ('smaraad', 0.5),
                                        ('smaraad_pp', 1.0)])
def test_method_loss_is_its_outer_function_of_the_model_outputs(name, alpha):
  """With a 0-step attack from x (init none), x' = x and the loss is Eq. 9
  (or 10) of the two models' logits and CAMs."""
  method, s_vars, t_vars, batch, keys, ctx = _setup(name, alpha=alpha)
  c = ctx(t_vars, methods.AttackSpec(steps=0, init='none'))
  loss, _ = method.loss(s_vars['params'], batch, keys, c)
  x, y = batch['image'], batch['label']
  student = c.apply(s_vars['params'], x, train=True)[0]
  teacher = c.teachers['robust'](x)
  s_cam = cam_lib.normalized_cam(student.features,
                                 s_vars['params']['head']['kernel'], y)
  t_cam = cam_lib.normalized_cam(teacher.features,
                                 t_vars['params']['head']['kernel'], y)
  terms = smaraad.smaraad_terms(teacher.logits, t_cam, student.logits, s_cam,
                                gamma=1000.0)
  want = smaraad.smaraad_outer(terms, terms, c=2.0, alpha=alpha)
  if name == 'smaraad_pp':
    conf, weight = smaraad.teacher_reliability(teacher.logits, y, lam=0.1)
    want = smaraad.smaraad_pp_outer(want, student.logits, student.logits, y,
                                    conf, weight, gamma=1000.0)
  np.testing.assert_allclose(float(loss), float(jnp.mean(want)), rtol=1e-5)


def test_the_attack_raises_the_inner_objective():
  method, s_vars, t_vars, batch, keys, ctx = _setup('smaraad', steps=5)
  del method
  c = ctx(t_vars)
  x, y = batch['image'], batch['label']
  x_adv = smaraad._adversarial(s_vars['params'], x, y, keys, batch, c)  # pylint: disable=protected-access
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 8 / 255 + 1e-6

  def inner(z):
    t_logits, t_cam, classes = smaraad._teacher_view(c.teachers['robust'], z,  # pylint: disable=protected-access
                                                     c.hp, y)
    s = c.apply(s_vars['params'], z, train=False)[0]
    return smaraad.smaraad_inner(t_logits, t_cam, s.logits,
                                 smaraad._student_cam(s_vars['params'], s,  # pylint: disable=protected-access
                                                      y))
  assert float(jnp.mean(inner(x_adv))) > float(jnp.mean(inner(x)))


# --- Configs and the quick pipelines ------------------------------------------


def test_config_has_the_paper_recipe():
  from configs import smaraad as cfg  # pylint: disable=g-import-not-at-top
  config = cfg.get_config()
  assert config.method.name == 'smaraad'
  assert (config.optimizer.lr, config.optimizer.momentum,
          config.optimizer.weight_decay) == (0.1, 0.9, 5e-4)
  assert (config.batch_size, config.num_epochs) == (256, 200)
  assert tuple(config.schedule.boundaries) == (115, 160, 185)
  assert (config.method.gamma, config.method.c, config.method.alpha,
          config.method.lam) == (1000.0, 2.0, 1.0, 0.1)
  assert (config.attack.train.steps, config.attack.train.init) == (10, 'N')
  assert cfg.get_config('plus').method.name == 'smaraad_pp'
  plus_quick = cfg.get_config('plus:quick')
  assert plus_quick.method.name == 'smaraad_pp'
  assert plus_quick.model.name == 'resnet8'
  c100 = cfg.get_config('cifar100')
  assert (c100.dataset.train, c100.dataset.num_classes) == ('tfds:cifar100',
                                                             100)


def test_bad_cam_class_is_a_config_error():
  from configs import smaraad as cfg  # pylint: disable=g-import-not-at-top
  from jard import validation  # pylint: disable=g-import-not-at-top
  config = cfg.get_config('quick')
  config.method.cam_class = 'gradcam'
  with pytest.raises(validation.ConfigError, match='cam_class'):
    validation.validate(config)
  config = cfg.get_config('quick')
  config.model.name = 'amc_student'
  with pytest.raises(validation.ConfigError, match='CAMs'):
    validation.validate(config)


def _quick(variant, npz_path, **overrides):
  return quick_image_config('smaraad', variant, npz_path, **overrides)


@pytest.mark.parametrize('variant', ['quick', 'plus:quick'])
def test_quick_runs_end_to_end_and_resumes(variant, npz_path, tmp_path):
  """Teacher stage → student → eval; a run stopped after 2 steps and
  resumed ends with the parameters of an uninterrupted one."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  results = pipeline.run(_quick(variant, npz_path), full)
  assert results['last']['step'] == 4
  assert 0 <= results['last']['accuracy']['pgd20_sat'] <= 1
  assert os.path.isdir(os.path.join(full, 'teachers', 'robust', 'train'))
  assert_steps_compiled_once(full, min_runs=2)
  # The split run distils from the full run's teacher (a checkpoint, as a
  # user would give it), so only the student's training is repeated.
  teacher = {'teachers.robust.checkpoint': os.path.join(full, 'teachers',
                                                        'robust')}
  pipeline.run(_quick(variant, npz_path, stages='train', **teacher), split,
               stop_at_step=2)
  pipeline.run(_quick(variant, npz_path, stages='train', **teacher), split)

  def params(workdir):
    with ocp.CheckpointManager(os.path.join(workdir, 'train',
                                            'checkpoints')) as mngr:
      assert mngr.latest_step() == 4
      return mngr.restore(4, args=ocp.args.StandardRestore())['params']
  jax.tree.map(np.testing.assert_array_equal, params(full), params(split))
  # The eval stage drew the CAM grid (`cam_report.report`: the run's
  # teacher, the MSEs on the evaluated examples) and the training curves,
  # and report.md links both.
  with open(os.path.join(full, 'eval', 'cam_mse.json')) as f:
    result = json.load(f)
  assert result['num_examples'] == 32
  assert 0 <= result['clean'] <= 1 and 0 <= result['adversarial'] <= 1
  linked_pngs(os.path.join(full, 'eval', 'report.md'), cam_report.GRID,
              reports.CURVES)


def test_cam_compare_equals_the_direct_mean_alignment(tmp_path):
  """`cam_report.compare`: batched and padded, the clean MSE is the mean of
  L_align over the images; the adversarial images stay in the ε-ball."""
  student_model, teacher_model = _small_cnn(8, (1, 1)), _small_cnn(4, (1,))
  rng = np.random.default_rng(10)
  images = rng.integers(0, 256, (10, 8, 8, 3), np.uint8)
  labels = rng.integers(0, C, 10)
  x = jnp.asarray(images, jnp.float32) / 255
  s_vars = student_model.init(jax.random.key(0), x)
  t_vars = teacher_model.init(jax.random.key(1), x)
  result = cam_report.compare((student_model, s_vars),
                              (teacher_model, t_vars), images, labels,
                              batch_size=4, grid_examples=3)
  s_cam = cam_lib.normalized_cam(student_model.apply(s_vars, x).features,
                                 s_vars['params']['head']['kernel'], labels)
  t_cam = cam_lib.normalized_cam(teacher_model.apply(t_vars, x).features,
                                 t_vars['params']['head']['kernel'], labels)
  want = float(jnp.mean(cam_lib.cam_alignment(s_cam, t_cam)))
  np.testing.assert_allclose(result['clean'], want, rtol=1e-5)
  assert result['num_examples'] == 10 and result['adversarial'] > 0
  grid = result['grid']
  assert grid['images'].shape == (3, 8, 8, 3)
  assert np.max(np.abs(grid['adversarial'] - grid['images'])) <= 8 / 255 + 1e-6
  assert grid['teacher_clean'].shape == (3, 8, 8)
  assert grid['student_adversarial'].shape == (3, 4, 4)
  path = str(tmp_path / 'grid.png')
  cam_report.write_grid(path, grid, title='t')
  assert os.path.getsize(path) > 1000


def test_cam_compare_of_few_images_runs_one_unpadded_batch(monkeypatch):
  """Fewer images than `batch_size`: one batch of exactly those images (the
  pipeline's report compares 32 images; padding them to 250 made PGD-20 cost
  eight times the work), with the numbers of a smaller batch size."""
  model = _small_cnn(4, (1,))
  rng = np.random.default_rng(11)
  images = rng.integers(0, 256, (6, 8, 8, 3), np.uint8)
  labels = rng.integers(0, C, 6)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  shapes, batch = [], cam_report._batch
  monkeypatch.setattr(cam_report, '_batch', lambda x, *a, **k: (
      shapes.append(x.shape), batch(x, *a, **k))[1])
  pair = (model, variables)
  few = cam_report.compare(pair, pair, images, labels, batch_size=250)
  assert shapes == [(6, 8, 8, 3)]
  halves = cam_report.compare(pair, pair, images, labels, batch_size=3)
  np.testing.assert_allclose(few['adversarial'], halves['adversarial'],
                             rtol=1e-5)


def test_losses_package_exports_the_modules():
  assert losses.spearman is spearman and losses.cam is cam_lib
