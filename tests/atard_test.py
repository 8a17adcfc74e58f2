"""ATARD and the radio task: model sizes, PNR threat model, attention loss, method."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import atard as atard_config
from jard import attacks
from jard import data as data_lib
from jard import losses
from jard import models
from jard import pipeline
from jard import teachers as teacher_lib
from jard import validation
from jard.methods import AttackSpec
from jard.methods import Context
from jard.methods import Teacher
from jard.methods import atard

from quick_configs import assert_steps_compiled_once
from quick_configs import linked_pngs


def _vit_params(width, depth, mlp, patch=8, length=128, classes=11):
  """ViT parameter count written out independently of the Flax module."""
  tokens = length // patch + 1
  embed = 2 * patch * width + width + width + tokens * width  # conv, CLS, pos
  layer = (2 * 2 * width                      # two LayerNorms
           + width * 3 * width + 3 * width    # QKV
           + width * width + width            # output projection
           + width * mlp + mlp + mlp * width + width)  # MLP
  return embed + depth * layer + 2 * width + width * classes + classes


def _count(model):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, 128))))
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_amc_transformer_parameter_counts():
  teacher = models.create_model('amc_teacher', 11)
  student = models.create_model('amc_student', 11)
  assert _count(teacher) == _vit_params(128, 6, 256) == 801_035
  assert _count(student) == _vit_params(96, 2, 384) == 228_299


def test_amc_transformer_outputs_attention_per_layer():
  model = models.create_model('amc_teacher', 11)
  x = jax.random.normal(jax.random.key(0), (3, 2, 128)) * 0.01
  variables = model.init(jax.random.key(1), x)
  out = model.apply(variables, x)
  assert out.logits.shape == (3, 11)
  assert out.features.shape == (3, 1, 16, 128)
  assert len(out.attention) == 6
  for probs in out.attention:
    assert probs.shape == (3, 8, 17, 17)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match=r'\[B, 2, L\]'):
    model.apply(variables, jnp.zeros((3, 128, 2, 1)))


# --- The PNR threat model ----------------------------------------------------


def test_pnr_budget_is_exact_on_test_vectors():
  x = np.zeros((3, 2, 128), np.float32)
  x[0, 0, 0] = 3.0
  x[0, 1, 0] = 4.0            # ‖x‖ = 5
  x[1] = 0.01                 # ‖x‖ = 0.01·16 = 0.16
  x[2, 0, :4] = 1.0           # ‖x‖ = 2
  snr = np.array([10, 0, -20], np.int32)
  eps = attacks.pnr_budget(jnp.asarray(x), jnp.asarray(snr), -10.0)
  np.testing.assert_allclose(
      eps, [5 * 10 ** (-20 / 20), 0.16 * 10 ** (-10 / 20),
            2 * 10 ** (10 / 20)], rtol=1e-6)
  # FGM spends exactly the budget: PSR + SNR = PNR, in dB.
  loss = lambda z: jnp.sum(jnp.sin(7 * z.reshape(3, -1)), -1)
  x_fgm = attacks.radio.fgm(loss, jnp.asarray(x), jnp.asarray(snr),
                            pnr_db=-10.0)
  delta = np.asarray(x_fgm - x).reshape(3, -1)
  psr = 10 * np.log10(np.sum(delta ** 2, -1) / np.sum(x.reshape(3, -1) ** 2,
                                                       -1))
  np.testing.assert_allclose(psr + snr, -10.0, atol=1e-4)


def _random_head(variables):
  """The ViT head starts at zero (no input gradient); give it weights."""
  variables = jax.tree.map(lambda v: v, variables)  # a copy
  head = variables['params']['head']
  head['kernel'] = jax.random.normal(jax.random.key(9), head['kernel'].shape)
  return variables


@pytest.mark.parametrize('pnr', [-20.0, -5.0, 0.0])
def test_radio_attacks_stay_within_per_example_budget(pnr):
  model = models.create_model('amc_transformer', 11, width=16, depth=1,
                              heads=2, mlp_dim=32)
  x = jax.random.normal(jax.random.key(0), (16, 2, 128)) * 0.01
  y = jnp.arange(16) % 11
  snr = jnp.arange(-20, 12, 2)
  variables = _random_head(model.init(jax.random.key(1), x))
  ce = lambda z: losses.cross_entropy(model.apply(variables, z).logits, y)
  eps = np.asarray(attacks.pnr_budget(x, snr, pnr))
  keys = jax.random.split(jax.random.key(2), 16)
  for x_adv in (attacks.radio.fgm(ce, x, snr, pnr_db=pnr),
                attacks.radio.pgd(ce, x, keys, snr, pnr_db=pnr, steps=5)):
    norms = np.linalg.norm(np.asarray(x_adv - x).reshape(16, -1), axis=-1)
    assert np.all(norms <= eps * (1 + 1e-5))
    assert np.all(norms >= 0.5 * eps)  # the budget is used, not ignored
  # PGD is at least as strong as FGM on average (more steps, same budget).
  pgd_loss = ce(attacks.radio.pgd(ce, x, keys, snr, pnr_db=pnr, steps=10))
  assert float(jnp.mean(pgd_loss)) >= float(jnp.mean(
      ce(attacks.radio.fgm(ce, x, snr, pnr_db=pnr)))) - 1e-4


def test_attack_spec_pnr_budget_needs_snr():
  spec = AttackSpec(norm='l2', budget='pnr', pnr=-10.0, steps=2, bounds=None)
  with pytest.raises(ValueError, match='SNR'):
    spec.pgd(lambda z: jnp.sum(z.reshape(2, -1), -1), jnp.ones((2, 2, 128)),
             jax.random.split(jax.random.key(0), 2))
  with pytest.raises(ValueError, match='SNR'):
    spec.pgd_with_state(lambda z, s: (jnp.sum(z.reshape(2, -1), -1), s),
                        jnp.ones((2, 2, 128)),
                        jax.random.split(jax.random.key(0), 2), {})


def test_stateful_attack_at_a_pnr_budget_is_the_radio_pgd():
  """ARD and IAD attack in train mode (`pgd_with_state`); on radio signals
  that is the radio PGD with the state threaded through."""
  spec = AttackSpec(norm='l2', budget='pnr', pnr=-10.0, steps=3, bounds=None)
  w = jax.random.normal(jax.random.key(4), (256,))
  loss = lambda z: jnp.tanh(z.reshape(z.shape[0], -1) @ w)
  x = jax.random.normal(jax.random.key(0), (6, 2, 128)) * 0.01
  batch = {'snr': jnp.array([-10, 0, 10, 18, 4, -20], jnp.int32)}
  keys = jax.random.split(jax.random.key(1), 6)

  def counting(z, calls):  # the state counts the forward passes
    return loss(z), calls + 1
  x_adv, calls = spec.pgd_with_state(counting, x, keys, jnp.zeros(()), batch)
  np.testing.assert_allclose(x_adv, spec.pgd(loss, x, keys, batch), rtol=1e-6,
                             atol=1e-9)
  assert int(calls) == 3
  eps = attacks.radio.pnr_budget(x, batch['snr'], -10.0)
  norms = jnp.linalg.norm((x_adv - x).reshape(6, -1), axis=-1)
  assert bool(jnp.all(norms <= eps * (1 + 1e-5)))
  assert bool(jnp.all(norms >= 0.5 * eps))


# --- The attention-map loss and the layer mapping ---------------------------


def test_parse_layer_groups():
  assert losses.parse_layer_groups('1-3,4-6') == ((0, 1, 2), (3, 4, 5))
  assert losses.parse_layer_groups('2,5') == ((1,), (4,))
  for bad in ('0-2', '3-1', 'a', ''):
    with pytest.raises(ValueError, match='layer_groups'):
      losses.parse_layer_groups(bad)


def _random_attention(key, layers, heads, batch=4, tokens=17):
  keys = jax.random.split(key, layers)
  return tuple(jax.nn.softmax(jax.random.normal(k, (batch, heads, tokens,
                                                    tokens)), -1)
               for k in keys)


def test_attention_map_loss_matches_numpy():
  student = _random_attention(jax.random.key(0), 2, 4)
  teacher = _random_attention(jax.random.key(1), 6, 8)
  groups = losses.parse_layer_groups('1-3,4-6')
  got = losses.attention_map_loss(student, teacher, groups)
  s = [np.asarray(a, np.float64) for a in student]
  t = [np.asarray(a, np.float64) for a in teacher]
  want = np.zeros(4)
  for b in range(4):
    for l, group in enumerate([[0, 1, 2], [3, 4, 5]]):
      s_map = sum(s[l][b, h] for h in range(4)) / 4
      t_map = sum(sum(t[k][b, h] for h in range(8)) / 8 for k in group) / 3
      want[b] += ((s_map - t_map) ** 2).sum() / 17 ** 2
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Another mapping gives another value: the groups are really used.
  other = losses.attention_map_loss(student, teacher,
                                    losses.parse_layer_groups('1,6'))
  assert not np.allclose(other, got)
  with pytest.raises(ValueError, match='one teacher layer group per student'):
    losses.attention_map_loss(student, teacher, ((0,),))
  with pytest.raises(ValueError, match='needs 7 teacher layers'):
    losses.attention_map_loss(student, teacher, ((0,), (6,)))


def _atard_setup(distill='attention', beta=100.0, alpha=0.0):
  student = models.create_model('amc_transformer', 11, width=16, depth=2,
                                heads=2, mlp_dim=32)
  teacher = models.create_model('amc_transformer', 11, width=24, depth=4,
                                heads=4, mlp_dim=48)
  x = jax.random.normal(jax.random.key(0), (8, 2, 128)) * 0.01
  batch = {'image': x, 'label': jnp.arange(8) % 11,
           'snr': jnp.full((8,), 10, jnp.int32)}
  s_vars = _random_head(student.init(jax.random.key(1), x))
  t_vars = _random_head(teacher.init(jax.random.key(2), x))
  hp = flax.core.FrozenDict({'distill': distill, 'beta': beta, 'alpha': alpha,
                             'temperature': 2.0, 'layer_groups': '1-2,3-4'})
  # No attack steps and no random start: x' = x, so the loss is checkable.
  spec = AttackSpec(norm='l2', budget='pnr', pnr=-10.0, steps=0, init='none',
                    bounds=None)

  def ctx(t_variables):
    return Context(model=student, batch_stats={}, hp=hp, attack=spec,
                   step=jnp.zeros((), jnp.int32), epoch=jnp.zeros((), jnp.int32),
                   teachers={'robust': Teacher(teacher, t_variables)},
                   num_classes=11)
  keys = jax.random.split(jax.random.key(3), 8)
  return student, teacher, s_vars, t_vars, batch, keys, ctx


def test_atard_loss_value_and_frozen_teacher():
  student, teacher, s_vars, t_vars, batch, keys, ctx = _atard_setup()
  loss, aux = atard.atard_loss(s_vars['params'], batch, keys, ctx(t_vars))
  s_out = student.apply(s_vars, batch['image'])
  t_out = teacher.apply(t_vars, batch['image'])
  ce = losses.cross_entropy(s_out.logits, batch['label'])
  att = losses.attention_map_loss(s_out.attention, t_out.attention,
                                  ((0, 1), (2, 3)))
  np.testing.assert_allclose(loss, jnp.mean(ce + 100.0 * att), rtol=1e-5)
  assert float(aux['metrics']['attention_loss']) > 0
  # The teacher gets no gradient; the student does, also from the maps.
  t_grad = jax.grad(lambda tv: atard.atard_loss(s_vars['params'], batch, keys,
                                                ctx(tv))[0])(t_vars)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(t_grad))
  s_grad = jax.grad(lambda p: atard.atard_loss(p, batch, keys,
                                               ctx(t_vars))[0])(
                                                   s_vars['params'])
  assert float(jnp.max(jnp.abs(
      s_grad['layer0']['attention']['qkv']['kernel']))) > 0


def test_atard_ablations():
  student, teacher, s_vars, t_vars, batch, keys, ctx = _atard_setup(
      distill='logits', alpha=0.5)
  loss, aux = atard.atard_loss(s_vars['params'], batch, keys, ctx(t_vars))
  s_logits = student.apply(s_vars, batch['image']).logits
  t_logits = teacher.apply(t_vars, batch['image']).logits
  kl = losses.distillation_kl(t_logits, s_logits, temperature=2.0)
  want = losses.cross_entropy(s_logits, batch['label']) + 0.5 * 4.0 * kl
  np.testing.assert_allclose(loss, jnp.mean(want), rtol=1e-5)
  assert 'attention_loss' not in aux['metrics']
  *_, ctx_both = _atard_setup(distill='both', alpha=0.5)
  both, aux = atard.atard_loss(s_vars['params'], batch, keys, ctx_both(t_vars))
  assert {'attention_loss', 'kl'} <= set(aux['metrics'])
  assert float(both) > float(loss)


# --- Validation and the pipeline --------------------------------------------


def test_validation_of_radio_configs():
  config = atard_config.get_config('quick')
  validation.validate(config)
  bad = atard_config.get_config('quick')
  bad.method.layer_groups = '1,2'  # two groups for a 1-layer student
  with pytest.raises(validation.ConfigError, match='1-layer student'):
    validation.validate(bad)
  bad = atard_config.get_config('quick')
  bad.method.layer_groups = '3'    # the quick teacher has 2 layers
  with pytest.raises(validation.ConfigError, match='teacher has 2 layers'):
    validation.validate(bad)
  bad = atard_config.get_config('quick')
  bad.dataset.augment = True
  with pytest.raises(validation.ConfigError, match='augment'):
    validation.validate(bad)
  bad = atard_config.get_config('quick')
  bad.teachers = type(bad.teachers)()
  with pytest.raises(validation.ConfigError, match='needs teacher'):
    validation.validate(bad)
  bad = atard_config.get_config('quick')
  bad.select.metric = 'pgd20_sat'
  with pytest.raises(validation.ConfigError, match='radio protocol'):
    validation.validate(bad)
  image = importlib_config('pgd_at')
  image.attack.train.budget = 'pnr'
  with pytest.raises(validation.ConfigError, match='radio source'):
    validation.validate(image)


def importlib_config(name, arg=None):
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f'configs.{name}').get_config(arg)


def test_atard_quick_pipeline_end_to_end(tmp_path):
  """teacher → AT student + ATARD student → radio evaluation → report."""
  config = atard_config.get_config('quick')
  workdir = str(tmp_path / 'run')
  results = pipeline.run(config, workdir)
  assert results['last']['radio']['num_examples'] == 64
  for stage in ('teachers/robust/train', 'train', 'baselines/at/train'):
    assert os.path.exists(os.path.join(workdir, stage, 'COMPLETE')), stage
  assert_steps_compiled_once(workdir, min_runs=3)
  with open(os.path.join(workdir, 'results.json')) as f:
    compared = json.load(f)
  assert len(compared) == 3
  names = ' '.join(compared)
  assert 'teacher robust' in names and 'pgd_at' in names and 'atard' in names
  for res in compared.values():
    assert set(res['vs_pnr']) == {'0', '10'}
    # The sweep reuses the clean pass: its clean accuracy at an SNR is the
    # accuracy-vs-SNR curve's at that SNR.
    for snr, curve in res['vs_pnr'].items():
      j = res['vs_snr']['snr'].index(float(snr))
      assert curve['clean'] == pytest.approx(res['vs_snr']['clean'][j])
      assert len(curve['pgd']) == len(curve['fgm']) == 2
    assert len(res['vs_snr']['snr']) == len(res['vs_snr']['pgd'])
    assert res['grad_norm'] > 0
  linked_pngs(os.path.join(workdir, 'report.md'), 'accuracy_vs_pnr.png',
              'accuracy_vs_snr.png')
  # The student's own report also has its training curves.
  linked_pngs(os.path.join(workdir, 'eval', 'last', 'report.md'),
              'accuracy_vs_pnr.png', 'training_curves.png')
  # A second run skips everything and returns the same results.
  again = pipeline.run(atard_config.get_config('quick'), workdir)
  assert again == json.loads(json.dumps(results))
  # The trained teacher loads read-only from its workdir (as a checkpoint
  # given by a user would), with the parameter count the report shows.
  spec = config.teachers.robust
  model = teacher_lib.build_model(spec, 11)
  variables = teacher_lib.load_variables(
      os.path.join(workdir, 'teachers', 'robust', 'train'), model, (2, 128))
  count = teacher_lib.parameter_count(variables)
  assert any(r['num_params'] == count for r in [
      json.load(open(os.path.join(workdir, 'teachers', 'robust', 'eval',
                                  'results.json')))['last']])
  with pytest.raises(FileNotFoundError, match='no jard checkpoints'):
    teacher_lib.load_variables(str(tmp_path), model, (2, 128))
  given = atard_config.get_config('quick')
  given.teachers.robust.checkpoint = str(tmp_path / 'missing')
  with pytest.raises(validation.ConfigError, match='not a directory'):
    validation.validate(given)


def test_radio_source_specs(tmp_path):
  kw = dict(num_classes=11, image_size=32, cache_dir=str(tmp_path))
  train = data_lib.load('amc_synthetic:per_key=4,seed=3', role='train',
                        field='config.dataset.source', **kw)
  test = data_lib.load('amc_synthetic:per_key=4,seed=3', role='test',
                       field='config.dataset.source', **kw)
  assert train.images.shape == (440, 2, 128) and train.is_signal
  assert train.bounds is None and train.extras['snr'].dtype == np.int32
  # Halves of one generated set: 2 per (modulation, SNR) key each, disjoint.
  for ds in (train, test):
    pairs = set(zip(ds.labels.tolist(), ds.extras['snr'].tolist()))
    assert len(pairs) == 220
  assert not set(map(bytes, train.images)) & set(map(bytes, test.images))
  assert len(os.listdir(tmp_path)) == 1  # generated once, cached
  sub = train.subset(np.arange(5), '[:5]')
  np.testing.assert_array_equal(sub.extras['snr'], train.extras['snr'][:5])
  for spec, match in [('amc_synthetic:per_key=x', 'not a int'),
                      ('amc_synthetic:size=3', 'bad amc_synthetic option'),
                      ('amc_synthetic:am_ssb=maybe', 'am_ssb'),
                      ('radioml:' + str(tmp_path / 'no.pkl'), 'no.pkl')]:
    with pytest.raises(data_lib.DataError, match=match):
      data_lib.load(spec, role='train', field='config.dataset.source', **kw)
