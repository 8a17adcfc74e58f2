"""ADER: the attention branch, the attention KL and ω against numpy, the two
teachers' inputs and gradients, and the quick pipeline with each ablation."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jard import attention_report
from jard import methods
from jard import models
from jard import pipeline
from jard import reports
from jard import validation
from jard.losses import spatial_attention
from jard.methods import ader
from jard.models import Outputs
from jard.models import resnet
import numpy_reference
from quick_configs import assert_steps_compiled_once
from quick_configs import linked_pngs
from quick_configs import quick_image_config

B, C = 6, 10


# --- The attention branch --------------------------------------------------


@pytest.mark.parametrize('name,stage,map_size,branch_params', [
    # conv3×3 256→256 (589,824) + BN (512) + 1×1 256→10 (2,570) + 1×1 10→1 (11)
    ('resnet18', 3, 8, 592_917),
    # conv3×3 128→128 (147,456) + BN (256) + 1×1 128→10 (1,290) + 11
    ('resnet18', 2, 16, 149_013),
    # stage 5 has 96 channels: 82,944 + 192 + 970 + 11
    ('mobilenet_v2', 5, 8, 84_117),
])
def test_branch_keeps_the_logits_path_and_adds_known_parameters(
    name, stage, map_size, branch_params):
  x = jnp.zeros((2, 32, 32, 3))
  count = lambda m: sum(v.size for v in jax.tree.leaves(jax.eval_shape(
      lambda: m.init(jax.random.key(0), x))['params']))
  plain = models.create_model(name, C)
  branched = models.create_model(name, C, attention_stage=stage)
  assert count(branched) - count(plain) == branch_params
  out_plain = jax.eval_shape(lambda: plain.apply(
      plain.init(jax.random.key(0), x), x))
  out = jax.eval_shape(lambda: branched.apply(
      branched.init(jax.random.key(0), x), x))
  assert out.logits.shape == out_plain.logits.shape == (2, C)
  assert out.features.shape == out_plain.features.shape
  assert out.attention_map.shape == (2, map_size, map_size)
  assert out.aux_logits.shape == (2, C)
  assert out_plain.attention_map is None and out_plain.aux_logits is None


def test_resnet18_branch_parameter_count():
  """The reported figure (README): 11,173,962 + 592,917 = 11,766,879."""
  x = jnp.zeros((1, 32, 32, 3))
  model = models.create_model('resnet18', C, attention_stage=3)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))['params']
  assert sum(v.size for v in jax.tree.leaves(params)) == 11_766_879


def test_branch_map_in_unit_interval_and_refines_features():
  model = resnet.ResNet(stage_sizes=(1, 1), widths=(8, 8), num_classes=C,
                        attention_stage=1)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x)
  assert float(jnp.min(out.attention_map)) > 0
  assert float(jnp.max(out.attention_map)) < 1
  with pytest.raises(ValueError, match='attention_stage=3'):
    resnet.ResNet(stage_sizes=(1, 1), widths=(8, 8),
                  attention_stage=3).init(jax.random.key(0), x)


def test_teacher_recipes_train_the_branch_with_its_aux_ce():
  """A jard-trained teacher with a branch: natural/PGD-AT add CE(aux, y)."""
  model = resnet.ResNet(stage_sizes=(1, 1), widths=(8, 8), num_classes=C,
                        attention_stage=1)
  x = jnp.asarray(np.random.default_rng(5).uniform(size=(4, 8, 8, 3)),
                  jnp.float32)
  y = jnp.arange(4)
  variables = model.init(jax.random.key(0), x)
  c = methods.Context(model=model, batch_stats=variables['batch_stats'],
                      hp={'aux_weight': 0.5}, attack=methods.AttackSpec(),
                      step=jnp.int32(0), epoch=jnp.int32(0))
  loss, _ = methods.get_method('natural').loss(
      variables['params'], {'image': x, 'label': y}, None, c)
  out = c.apply(variables['params'], x, train=True)[0]
  from jard import losses  # pylint: disable=g-import-not-at-top
  want = (jnp.mean(losses.cross_entropy(out.logits, y))
          + 0.5 * jnp.mean(losses.cross_entropy(out.aux_logits, y)))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


# --- The attention KL and ω against numpy ----------------------------------


def _np_kl_maps(s, t, normalization, tau=1.0):
  s = np.asarray(s, np.float64).reshape(len(s), -1)
  t = np.asarray(t, np.float64).reshape(len(t), -1)
  if normalization == 'softmax':
    p, q = numpy_reference.softmax(s / tau), numpy_reference.softmax(t / tau)
    return np.sum(p * (np.log(p) - np.log(q)), 1)
  p, q = s / s.sum(1, keepdims=True), t / t.sum(1, keepdims=True)
  return np.sum(p * (np.log(p + 1e-8) - np.log(q + 1e-8)), 1)


@pytest.mark.parametrize('normalization,tau', [('softmax', 1.0),
                                               ('softmax', 0.5), ('l1', 1.0)])
@pytest.mark.parametrize('teacher_size', [4, 8])
def test_attention_kl_matches_numpy(normalization, tau, teacher_size):
  rng = np.random.default_rng(1)
  s = rng.uniform(0.01, 1, size=(B, 4, 4)).astype(np.float32)
  t = rng.uniform(0.01, 1, size=(B, teacher_size, teacher_size)).astype(
      np.float32)
  got = spatial_attention.attention_kl(jnp.asarray(s), jnp.asarray(t),
                                       normalization=normalization,
                                       temperature=tau)
  # The teacher map is shrunk to the student's 4×4 (PyTorch bilinear).
  want = _np_kl_maps(s, numpy_reference.bilinear(t, (4, 4)), normalization,
                     tau)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # Eq. 3's order: the student's distribution first (not symmetric).
  reverse = _np_kl_maps(numpy_reference.bilinear(t, (4, 4)), s,
                        normalization, tau)
  assert not np.allclose(want, reverse)


def test_activation_attention_matches_numpy():
  a = np.random.default_rng(2).normal(size=(B, 8, 8, 16)).astype(np.float32)
  energy = np.sum(np.asarray(a, np.float64) ** 2, -1)
  want = energy / energy.max((1, 2), keepdims=True)
  np.testing.assert_allclose(spatial_attention.activation_attention(a), want,
                             rtol=1e-5)


def test_omega_matches_numpy_and_favours_the_slower_teacher():
  state = ader.ader_init_state({}, C)
  losses_seen = [(2.0, 4.0), (1.0, 3.6), (0.5, 3.0)]  # clean falls faster
  l0 = None
  for beta in (1.0,):
    for clean, adv in losses_seen:
      omega, state = ader.ader_weight(state, jnp.float32(clean),
                                      jnp.float32(adv), beta=beta)
      l0 = l0 or (clean, adv)
      r_c, r_a = (clean / l0[0]) ** beta, (adv / l0[1]) ** beta
      np.testing.assert_allclose(float(omega), r_c / (r_c + r_a), rtol=1e-6)
  # The adversarial loss fell less, so its teacher (1 − ω) gains weight.
  assert float(omega) < 0.5
  assert (float(state['loss0_clean']), float(state['loss0_adv'])) == (2.0,
                                                                       4.0)
  omega2, _ = ader.ader_weight(state, jnp.float32(0.5), jnp.float32(3.0),
                               beta=2.0)
  r_c, r_a = 0.25 ** 2, 0.75 ** 2
  np.testing.assert_allclose(float(omega2), r_c / (r_c + r_a), rtol=1e-6)
  for teachers, want in (('clean', 1.0), ('adversarial', 0.0)):
    assert float(ader.ader_weight(state, jnp.float32(1), jnp.float32(1),
                                  teachers=teachers)[0]) == want


# --- The method in a context -----------------------------------------------


class _InputTeacher(nn.Module):
  """A teacher whose logits and feature map follow its input closely, so
  tests can tell which input (x or x') each teacher received."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    logits = 10 * nn.Dense(C)(x.reshape(x.shape[0], -1))
    return Outputs(logits=logits, features=x)


def _setup(steps=2, eps=8 / 255, **hp):
  model = resnet.ResNet(stage_sizes=(1, 1), widths=(8, 8), num_classes=C,
                        attention_stage=1)  # 8×8 maps on 8×8 inputs
  natural_model = _InputTeacher()
  robust_model = resnet.ResNet(stage_sizes=(1, 1), widths=(4, 8),
                               num_classes=C, attention_stage=2)  # 4×4 M
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(8, 8, 8, 3)),
                  jnp.float32)
  y = jnp.arange(8) % C
  s_vars = model.init(jax.random.key(0), x)
  n_vars = natural_model.init(jax.random.key(1), x)
  r_vars = robust_model.init(jax.random.key(2), x)
  keys = jax.random.split(jax.random.key(3), 8)
  hp = {'beta': 1.0, 'aux_weight': 1.0, **hp}

  def ctx(n, r, state=None):
    return methods.Context(
        model=model, batch_stats=s_vars['batch_stats'], hp=hp,
        attack=methods.AttackSpec(eps=eps, step_size=eps / 2, steps=steps,
                                  init='N'), step=jnp.int32(0),
        epoch=jnp.int32(0),
        state=state if state is not None else ader.ader_init_state(hp, C),
        teachers={'natural': methods.Teacher(natural_model, n),
                  'robust': methods.Teacher(robust_model, r)},
        num_classes=C)
  return s_vars, (n_vars, r_vars), {'image': x, 'label': y}, keys, ctx


def test_teachers_get_no_gradient_and_see_x_and_x_adv():
  # A large ε, so that the teachers' outputs on x and x' differ clearly.
  s_vars, (n_vars, r_vars), batch, keys, ctx = _setup(eps=0.5)
  params = s_vars['params']
  loss, aux = ader.ader_loss(params, batch, keys, ctx(n_vars, r_vars))
  assert np.isfinite(float(loss))
  grads = jax.grad(lambda n, r: ader.ader_loss(params, batch, keys,
                                               ctx(n, r))[0],
                   argnums=(0, 1))(n_vars, r_vars)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grads))
  s_grad = jax.grad(lambda p: ader.ader_loss(p, batch, keys,
                                             ctx(n_vars, r_vars))[0])(params)
  assert float(jnp.max(jnp.abs(s_grad['attention']['map_conv']['kernel']))) > 0
  # The loss, recomputed from its parts: T_nat on x, T_rob on x'.
  c = ctx(n_vars, r_vars)
  x, y = batch['image'], batch['label']
  logits_fn = c.logits_fn(params)
  from jard import losses  # pylint: disable=g-import-not-at-top
  x_adv = c.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                       keys, batch)
  assert float(jnp.max(jnp.abs(x_adv - x))) > 0
  adv, stats = c.apply(params, x_adv, train=True)
  clean, _ = c.apply(params, x, train=True, batch_stats=stats)

  def expected(nat_input, rob_input):
    t_nat, t_rob = c.teachers['natural'](nat_input), c.teachers['robust'](
        rob_input)
    clean_term = ader.ader_terms(t_nat.logits, ader.teacher_map(t_nat),
                                 clean.logits, clean.attention_map)
    adv_term = ader.ader_terms(t_rob.logits, ader.teacher_map(t_rob),
                               adv.logits, adv.attention_map)
    # First step: L(0) = L(t), so r = 1 and ω = 1/2.
    aux_ce = 0.5 * (losses.cross_entropy(clean.aux_logits, y)
                    + losses.cross_entropy(adv.aux_logits, y))
    return float(jnp.mean(0.5 * clean_term + 0.5 * adv_term + aux_ce))
  np.testing.assert_allclose(float(loss), expected(x, x_adv), rtol=1e-5)
  assert abs(expected(x_adv, x) - float(loss)) > 1e-3
  assert float(aux['metrics']['omega']) == 0.5
  # The robust teacher has a branch (its M is used), the natural one not.
  assert c.teachers['robust'](x).attention_map is not None
  assert c.teachers['natural'](x).attention_map is None


@pytest.mark.parametrize('distill', ['logits', 'attention'])
def test_distill_ablation_drops_one_term(distill):
  rng = np.random.default_rng(4)
  tl, sl = (jnp.asarray(rng.normal(size=(B, C)), jnp.float32)
            for _ in range(2))
  tm, sm = (jnp.asarray(rng.uniform(size=(B, 4, 4)), jnp.float32)
            for _ in range(2))
  both = ader.ader_terms(tl, tm, sl, sm)
  only = ader.ader_terms(tl, tm, sl, sm, distill=distill)
  other = ader.ader_terms(tl, tm, sl, sm, distill={
      'logits': 'attention', 'attention': 'logits'}[distill])
  np.testing.assert_allclose(only + other, both, rtol=1e-6)
  assert float(jnp.min(only)) > 0


# --- Configs and the quick pipelines ------------------------------------------


def test_config_has_the_paper_recipe_and_variants():
  from configs import ader as cfg  # pylint: disable=g-import-not-at-top
  config = cfg.get_config()
  assert (config.model.name, config.model.attention_stage) == ('resnet18', 3)
  assert (config.teachers.natural.model.name,
          config.teachers.robust.model.name) == ('resnet56', 'wrn34_10')
  assert (config.num_epochs, config.batch_size) == (300, 128)
  assert tuple(config.schedule.boundaries) == (215, 260, 285)
  c100 = cfg.get_config('cifar100')
  assert (c100.teachers.natural.model.name,
          c100.teachers.robust.model.name) == ('wrn22_6', 'wrn70_16')
  assert cfg.get_config('mobilenet').model.name == 'mobilenet_v2'
  bad = cfg.get_config('quick')
  bad.model.attention_stage = 0
  with pytest.raises(validation.ConfigError, match='attention_stage'):
    validation.validate(bad)
  bad = cfg.get_config('quick,teachers=both_of_them')
  with pytest.raises(validation.ConfigError, match='config.method.teachers'):
    validation.validate(bad)


def _quick(variant, npz_path, **overrides):
  return quick_image_config('ader', variant, npz_path, **overrides)


@pytest.fixture(scope='module', name='teacher_run')
def teacher_run_fixture(npz_path, tmp_path_factory):
  """Both quick teachers, trained once by the pipeline's teacher stage."""
  workdir = str(tmp_path_factory.mktemp('ader_teachers'))
  pipeline.run(_quick('quick', npz_path, stages='teachers'), workdir)
  return workdir


def test_quick_runs_end_to_end_and_draws_the_attention_grid(npz_path,
                                                            tmp_path):
  workdir = str(tmp_path / 'ader')
  results = pipeline.run(_quick('quick', npz_path), workdir)
  assert results['last']['step'] == 4
  for name in ('natural', 'robust'):
    assert os.path.isdir(os.path.join(workdir, 'teachers', name, 'train'))
  assert_steps_compiled_once(workdir, min_runs=3)  # and the two teachers'
  # The eval stage drew the attention grid (`attention_report.report`) and
  # the training curves; report.md links both.
  linked_pngs(os.path.join(workdir, 'eval', 'report.md'),
              attention_report.GRID, reports.CURVES)


def test_attention_grid_maps():
  s_vars, (n_vars, r_vars), batch, _, ctx = _setup()
  c = ctx(n_vars, r_vars)
  grid = attention_report.attention_grid(
      (c.model, s_vars), (c.teachers['natural'].model, n_vars),
      (c.teachers['robust'].model, r_vars), np.asarray(batch['image'][:3]),
      np.asarray(batch['label'][:3]))
  assert grid['student_clean'].shape == (3, 8, 8)
  assert grid['robust_adversarial'].shape == (3, 4, 4)  # the teacher's own M
  assert grid['natural_clean'].shape == (3, 8, 8)  # activation attention
  assert np.max(np.abs(grid['adversarial'] - grid['images'])) <= 8 / 255 + 1e-6
  for key, _, map_key in attention_report.COLUMNS:
    del key
    if map_key:
      assert 0 <= grid[map_key].min() and grid[map_key].max() <= 1


@pytest.mark.parametrize('variant', ['teachers=clean', 'teachers=adversarial',
                                     'distill=logits', 'distill=attention'])
def test_quick_ablations_train(variant, npz_path, teacher_run, tmp_path):
  config = _quick('quick,' + variant, npz_path, stages='train',
                  num_train_steps=2)
  for name in ('natural', 'robust'):
    config.teachers[name].checkpoint = os.path.join(teacher_run, 'teachers',
                                                    name)
  pipeline.run(config, str(tmp_path / 'run'))
  import json  # pylint: disable=g-import-not-at-top
  with open(tmp_path / 'run' / 'train' / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  omegas = [r['train/omega'] for r in rows if 'train/omega' in r]
  assert omegas
  if variant == 'teachers=clean':
    assert set(omegas) == {1.0}
  elif variant == 'teachers=adversarial':
    assert set(omegas) == {0.0}
