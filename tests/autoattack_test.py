"""AutoAttack: the masked cascade, the sharded runner, checks and ordering."""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attacks_test  # the shared small CNN trained without defence
from jard import attacks
from jard import data as data_lib
from jard import evaluate_autoattack
from jard import losses
from jard.attacks import autoattack as aa
from jard.models import outputs

EPS = 8 / 255
# Reduced budgets keep the tests fast; the cascade logic does not depend on
# them (the reference settings are the defaults of `attack_fns`).
FAST = dict(n_iter=10, n_queries=60)


@pytest.fixture(scope='module', name='natural_model')
def natural_model_fixture():
  return attacks_test._train_natural_model()  # pylint: disable=protected-access


def _keys(n, seed=0):
  return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed),
                                                  jnp.arange(n))


def _sequential(logits_fn, x, y, keys, fns, eps):
  """The reference's loop: each attack alone on the gathered survivors."""
  x, y = np.asarray(x), np.asarray(y)
  robust = np.asarray(jnp.argmax(logits_fn(x), -1)) == y
  x_out = x.copy()
  broken_by = {}
  for name, fn in fns.items():
    rows = np.flatnonzero(robust)
    broken_by[name] = np.zeros(len(x), bool)
    if not len(rows):
      continue
    adv, broken = aa.run_attack(fn, name, logits_fn, x[rows], y[rows],
                                keys[rows], eps=eps,
                                active=jnp.ones(len(rows), bool))
    broken = np.asarray(broken)
    x_out[rows[broken]] = np.asarray(adv)[broken]
    robust[rows[broken]] = False
    broken_by[name][rows[broken]] = True
  return x_out, robust, broken_by


def test_masked_cascade_equals_each_attack_alone_on_the_survivors(
    natural_model):
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  # Weak settings and the reverse order, so that every attack breaks some
  # points and some points survive them all (on this model APGD-CE alone
  # would break everything the others can).
  eps = 6 / 255
  fns = aa.attack_fns('standard', n_iter=1, n_queries=400)
  fns = {name: fns[name] for name in ('square', 'apgd-t', 'fab-t',
                                      'apgd-ce')}
  keys = _keys(64)
  got = jax.jit(lambda x, y, k: aa.autoattack(f, x, y, k, eps=eps,
                                              attacks=fns))(x, y, keys)
  want_x, want_robust, want_by = _sequential(f, x, y, keys, fns, eps)
  np.testing.assert_array_equal(np.asarray(got['robust']), want_robust)
  for name in fns:
    np.testing.assert_array_equal(np.asarray(got['broken_by'][name]),
                                  want_by[name], err_msg=name)
  np.testing.assert_array_equal(np.asarray(got['x_adv']), want_x)
  counts = {n: int(v.sum()) for n, v in want_by.items()}
  assert min(counts.values()) > 0 and want_robust.sum() > 0, counts
  # Worst case: robust exactly when clean-correct and no attack broke it.
  broken_any = np.any(np.stack(list(want_by.values())), 0)
  np.testing.assert_array_equal(
      want_robust, np.asarray(got['clean']) & ~broken_any)


def test_undefended_model_has_zero_robust_accuracy(natural_model):
  f, x, y = natural_model
  out = jax.jit(lambda x, y, k: aa.autoattack(
      f, x, y, k, eps=EPS, **FAST))(x[:128], y[:128], _keys(128))
  x_adv = np.asarray(out['x_adv'])
  assert np.asarray(out['robust']).mean() <= 0.01
  delta = np.abs(x_adv - np.asarray(x[:128])).reshape(128, -1).max(-1)
  assert delta.max() <= EPS + 1e-6
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  np.testing.assert_array_equal(pred == np.asarray(y[:128]),
                                np.asarray(out['robust']))


def test_each_attack_alone_breaks_an_undefended_model(natural_model):
  """Every attack of `plus` (and so of `standard`), run alone at 8/255."""
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  # Square needs its real budget here (it stops once all are fooled).
  for name, fn in aa.attack_fns('plus', n_iter=10, n_queries=5000).items():
    _, broken = jax.jit(lambda x, y, k, fn=fn, name=name: aa.run_attack(
        fn, name, f, x, y, k, eps=EPS, active=jnp.ones(64, bool)))(
            x, y, _keys(64))
    clean = np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)
    assert np.asarray(broken)[clean].mean() >= 0.95, name


# ---------------------------------------------------------------------------
# The runner: a flax model over a dataset.


class _Net(nn.Module):
  """The small CNN behind jard's model interface (`Outputs.logits`)."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = (x - 0.5) * 10.0
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    return outputs.Outputs(logits=nn.Dense(10)(x.reshape(x.shape[0], -1)))


def _adversarially_trained(steps=150):
  """PGD-AT of `_Net` on well-separated templates: partly robust at 8/255."""
  rng = np.random.RandomState(0)
  templates = 0.5 + 0.06 * np.sign(rng.randn(10, 8, 8, 3))

  def sample(n, seed):
    r = np.random.RandomState(seed)
    labels = r.randint(0, 10, n)
    images = np.clip(templates[labels] + 0.12 * r.randn(n, 8, 8, 3), 0, 1)
    return images.astype(np.float32), labels.astype(np.int32)

  x_train, y_train = sample(4096, 1)
  model = _Net()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  opt = optax.sgd(0.05, momentum=0.9)
  opt_state = opt.init(variables)

  @jax.jit
  def step(variables, opt_state, x, y, key):
    f = lambda z: model.apply(variables, z).logits
    x_adv = attacks.pgd(lambda z: losses.cross_entropy(f(z), y), x, key,
                        eps=EPS, step_size=2.5 * EPS / 5, steps=5)
    grads = jax.grad(lambda v: jnp.mean(losses.cross_entropy(
        model.apply(v, x_adv).logits, y)))(variables)
    updates, opt_state = opt.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state

  for i in range(steps):
    j = (i * 128) % 4096
    variables, opt_state = step(variables, opt_state, x_train[j:j + 128],
                                y_train[j:j + 128], jax.random.key(i))
  images, labels = sample(192, 2)
  # uint8 images, as datasets hold them (the runner converts to [0, 1]).
  images = np.round(images * 255).astype(np.uint8)
  ds = data_lib.ImageDataset(images, labels, 10, 'templates')
  return model, variables, ds


@pytest.fixture(scope='module', name='robust_model')
def robust_model_fixture():
  return _adversarially_trained()


def test_runner_matches_the_cascade_and_any_device_count(robust_model):
  model, variables, ds = robust_model
  n = 96
  one = evaluate_autoattack.AutoAttack(
      model, batch_size=8, devices=jax.devices()[:1], **FAST).run(
          variables, ds, num_examples=n)
  eight = evaluate_autoattack.AutoAttack(
      model, batch_size=64, **FAST).run(variables, ds, num_examples=n)
  sharded = evaluate_autoattack.AutoAttack(
      model, batch_size=16, mode='shard_map', **FAST).run(
          variables, ds, num_examples=n)
  assert 0.1 < one.accuracy['square'] < one.accuracy['clean']
  for other in (eight, sharded):
    np.testing.assert_array_equal(other.index, one.index)
    np.testing.assert_array_equal(other.clean, one.clean)
    np.testing.assert_array_equal(other.robust, one.robust)
    for name in one.broken_by:
      np.testing.assert_array_equal(other.broken_by[name],
                                    one.broken_by[name], err_msg=name)
    np.testing.assert_allclose(other.x_adv, one.x_adv, atol=1e-6)
    assert other.accuracy == one.accuracy
  # The fused cascade on the same examples and keys agrees.
  x = data_lib.to_float(ds.images[one.index])
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0),
                                                  jnp.asarray(one.index))
  f = lambda z: model.apply(variables, z).logits
  fused = jax.jit(lambda x, y, k: aa.autoattack(f, x, y, k, eps=EPS, **FAST))(
      x, ds.labels[one.index], keys)
  np.testing.assert_array_equal(np.asarray(fused['robust']), one.robust)
  # Passed checks leave no warnings; the summary is JSON-ready.
  assert one.warnings == {}
  summary = one.summary()
  assert summary['robust_accuracy'] == pytest.approx(one.robust.mean())
  assert set(summary['seconds']) == {'clean', 'apgd-ce', 'apgd-t', 'fab-t',
                                     'square'}


def test_processes_attack_their_share_and_merge_to_one_result(robust_model):
  """Two processes (run one after the other here; their all-gather stacked
  by hand) give the per-example results of one process."""
  model, variables, ds = robust_model
  n, count = 45, 2  # uneven shares: 23 and 22 rows
  runner = evaluate_autoattack.AutoAttack(model, batch_size=8, **FAST)
  whole = runner.run(variables, ds, num_examples=n)
  rows = whole.index
  parts = [runner._run_rows(variables, ds, rows[p::count], None, 60)[0]  # pylint: disable=protected-access
           for p in range(count)]
  size = -(-n // count)
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *[
      evaluate_autoattack._padded_part(part, size) for part in parts])  # pylint: disable=protected-access
  merged = evaluate_autoattack._merge_parts(stacked, n, count)  # pylint: disable=protected-access
  np.testing.assert_array_equal(merged['clean'], whole.clean)
  np.testing.assert_array_equal(
      merged['broken_by'], np.stack(list(whole.broken_by.values())))
  np.testing.assert_allclose(merged['x_adv'], whole.x_adv, atol=1e-6)
  assert whole.robust.sum() < whole.clean.sum()  # the attacks broke some


class _Killed(Exception):
  """Stands for the process dying in the middle of an attack."""


def test_a_stopped_run_resumes_from_its_progress_file(robust_model, tmp_path):
  model, variables, ds = robust_model
  runner = evaluate_autoattack.AutoAttack(model, batch_size=8, **FAST)
  full = runner.run(variables, ds, num_examples=96)
  assert (full.clean & ~full.broken_by['apgd-ce']).sum() > 8  # 2+ batches
  path = str(tmp_path / 'progress.npz')
  apgd_t = runner._attacks['apgd-t']  # pylint: disable=protected-access
  calls = []

  def dies_in_its_second_batch(*args):
    calls.append(1)
    if len(calls) == 2:
      raise _Killed()
    return apgd_t(*args)

  runner._attacks['apgd-t'] = dies_in_its_second_batch  # pylint: disable=protected-access
  # Batch saves are throttled: with a long interval the run dies before
  # one, so the file holds the state at the start of APGD-T.
  with pytest.raises(_Killed):
    runner.run(variables, ds, num_examples=96, progress_path=path,
               progress_every_seconds=3600)
  with np.load(path, allow_pickle=False) as saved:
    assert (int(saved['stage']), int(saved['done'])) == (1, 0)
  os.remove(path)
  calls.clear()
  with pytest.raises(_Killed):
    runner.run(variables, ds, num_examples=96, progress_path=path,
               progress_every_seconds=0)
  with np.load(path, allow_pickle=False) as saved:
    assert (int(saved['stage']), int(saved['done'])) == (1, 8)
  runner._attacks['apgd-t'] = apgd_t  # pylint: disable=protected-access
  # Resuming with another batch size continues the same per-example results.
  resumed = evaluate_autoattack.AutoAttack(model, batch_size=16, **FAST).run(
      variables, ds, num_examples=96, progress_path=path)
  np.testing.assert_array_equal(resumed.robust, full.robust)
  for name in full.broken_by:
    np.testing.assert_array_equal(resumed.broken_by[name],
                                  full.broken_by[name], err_msg=name)
  np.testing.assert_array_equal(resumed.x_adv, full.x_adv)
  assert resumed.accuracy == full.accuracy
  assert resumed.seconds['apgd-ce'] > 0 and resumed.warnings == {}
  # A finished file gives its result again without attacking.
  def never(*args):
    raise _Killed()

  runner._attacks = {name: never for name in full.broken_by}  # pylint: disable=protected-access
  again = runner.run(variables, ds, num_examples=96, progress_path=path)
  np.testing.assert_array_equal(again.robust, full.robust)
  runner = evaluate_autoattack.AutoAttack(model, batch_size=8, **FAST)
  # A file of other variables, or a damaged one, is refused up front.
  other = jax.tree.map(lambda v: v * 1.01, variables)
  with pytest.raises(ValueError, match='other variables, test rows'):
    runner.run(other, ds, num_examples=96, progress_path=path)
  with open(path, 'wb') as f:
    f.write(b'not an npz file')
  with pytest.raises(ValueError, match='unreadable.*delete'):
    runner.run(variables, ds, num_examples=96, progress_path=path)


def test_deterministic_for_a_seed_and_different_for_another(robust_model):
  model, variables, ds = robust_model
  run = lambda seed: evaluate_autoattack.AutoAttack(
      model, batch_size=64, seed=seed, attacks=('apgd-ce',), **FAST).run(
          variables, ds, num_examples=128)
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a.x_adv, b.x_adv)
  assert not np.array_equal(a.x_adv, c.x_adv)


def test_autoattack_is_at_most_each_white_box_attack_per_example(
    robust_model):
  """On an adversarially trained model, every point that APGD-CE, PGD-20 or
  CW∞ breaks, AutoAttack breaks too; so its accuracy is at most theirs."""
  from jard import evaluate  # pylint: disable=g-import-not-at-top
  model, variables, ds = robust_model
  result = evaluate_autoattack.AutoAttack(
      model, batch_size=64, n_iter=100, n_queries=500).run(variables, ds)
  suite = evaluate.Evaluator(model, 'clean,apgd_ce,pgd20_sat,cw_inf',
                             mode='pmap', batch_size=64)
  correct = suite.per_example(variables['params'], {}, ds)
  assert 0.2 < result.robust.mean() < 0.9 * result.clean.mean()
  for name in ('apgd_ce', 'pgd20_sat', 'cw_inf'):
    assert np.all(result.robust <= correct[name]), name
    assert result.robust.mean() <= correct[name].mean()


def test_sanity_checks_flag_softmax_outputs_and_zero_gradients(robust_model):
  model, variables, ds = robust_model

  class Softmax(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return outputs.Outputs(logits=jax.nn.softmax(
          model.apply(variables, x).logits * 0.0 + 1e3 * jnp.eye(10)[0]))

  runner = evaluate_autoattack.AutoAttack(Softmax(), batch_size=64,
                                          attacks=('apgd-ce',), **FAST)
  result = runner.run({}, ds, num_examples=64)
  assert 'softmax' in result.warnings
  assert 'zero_gradient' in result.warnings


def test_square_beating_white_box_is_flagged():
  runner = object.__new__(evaluate_autoattack.AutoAttack)
  runner.epsilon, runner.stochastic = EPS, True  # skip the recompute
  x = np.zeros((4, 2, 2, 3), np.uint8)
  labels = np.zeros(4, np.int32)
  accuracy = {'clean': 0.9, 'apgd-ce': 0.6, 'apgd-t': 0.55, 'fab-t': 0.55,
              'square': 0.5}
  warnings = runner._checks_after(None, x, labels, np.zeros((4, 2, 2, 3),
                                                            np.float32),
                                  np.zeros(4, bool), accuracy)
  assert 'square' in warnings and 'final' not in warnings
  accuracy['square'] = 0.549  # within the reference's 0.2 points
  assert 'square' not in runner._checks_after(
      None, x, labels, np.zeros((4, 2, 2, 3), np.float32), np.zeros(4, bool),
      accuracy)
  # A perturbation outside the ε-ball is reported.
  bad = np.full((4, 2, 2, 3), 0.5, np.float32)
  assert 'final' in runner._checks_after(None, x, labels, bad,
                                         np.zeros(4, bool), {'clean': 1.0})


def test_versions_and_bad_arguments():
  assert list(aa.attack_fns('standard')) == ['apgd-ce', 'apgd-t', 'fab-t',
                                             'square']
  assert list(aa.attack_fns('plus')) == ['apgd-ce', 'apgd-dlr', 'fab',
                                         'square', 'apgd-t', 'fab-t']
  assert list(aa.attack_fns('rand')) == ['apgd-ce', 'apgd-dlr']
  # The reference settings are the defaults.
  std = aa.attack_fns('standard')
  assert std['apgd-ce'].keywords['n_iter'] == 100
  assert std['apgd-ce'].keywords['n_restarts'] == 1
  assert std['apgd-t'].keywords['n_target_classes'] == 9
  assert std['fab-t'].keywords['n_target_classes'] == 9
  assert std['square'].keywords['n_queries'] == 5000
  assert aa.attack_fns('plus')['apgd-ce'].keywords['n_restarts'] == 5
  assert aa.attack_fns('rand')['apgd-dlr'].keywords['eot_iter'] == 20
  with pytest.raises(ValueError, match='version'):
    aa.attack_fns('fast')
  with pytest.raises(ValueError, match='stochastic_apply'):
    evaluate_autoattack.AutoAttack(_Net(), version='rand')
  with pytest.raises(ValueError, match='divisible'):
    evaluate_autoattack.AutoAttack(_Net(), batch_size=12)


def test_rand_version_with_a_stochastic_model(natural_model):
  """EoT on a model with input noise: the cascade runs APGD-CE and APGD-DLR
  with 20 keyed samples and breaks the undefended model."""
  f, x, y = natural_model

  def noisy(z, keys):
    noise = jax.vmap(lambda k: jax.random.normal(k, z.shape[1:]))(keys)
    return f(z + 0.02 * noise)

  out = jax.jit(functools.partial(aa.autoattack, noisy, eps=EPS,
                                  version='rand', n_iter=5))(
                                      x[:32], y[:32], _keys(32))
  assert np.asarray(out['robust']).mean() <= 0.1


def test_randomized_model_is_flagged(robust_model):
  """The reference's randomness check: 5 passes on the first batch."""
  model, variables, ds = robust_model
  runner = evaluate_autoattack.AutoAttack(model, batch_size=64,
                                          attacks=('apgd-ce',), **FAST)
  images, labels = ds.images[:64], ds.labels[:64]
  assert 'randomized' not in runner._checks_before(variables, images,
                                                   labels, 10)
  rng = np.random.default_rng(0)
  runner._logits = lambda v, x: model.apply(v, x).logits + rng.normal(
      0, 0.05, (len(x), 10))
  assert 'randomized' in runner._checks_before(variables, images, labels, 10)
  warnings = runner._checks_before(variables, images, labels, 3)
  assert 'n_classes' not in warnings  # apgd-ce alone needs no DLR
  runner.attacks = {'apgd-t': None}
  assert 'n_classes' in runner._checks_before(variables, images, labels, 3)
