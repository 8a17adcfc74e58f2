"""Square Attack: the reference's schedule and loss, and attack invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_test  # the shared small CNN trained without defence
from jard.attacks import square as square_lib

_EPS = 8 / 255
_N = 64  # examples attacked on the small CNN


def _keys(seed, n=_N):
  return jax.random.split(jax.random.key(seed), n)


def test_p_schedule_at_the_boundaries():
  its = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000,
         4001, 6000, 6001, 8000, 8001, 20000]
  halvings = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
  want = [0.8 / 2 ** k for k in halvings]
  assert [square_lib.p_schedule(i, 5000) for i in its] == want
  traced = jax.jit(lambda t: square_lib.p_schedule(t, 5000))(jnp.array(its))
  np.testing.assert_allclose(traced, want, rtol=1e-6)
  # Rescaled to 100 queries: `it` -> int(it / 100 * 10000) = 100 it.
  its = [0, 1, 2, 3, 5, 6, 10, 11, 20, 21, 40, 41, 60, 61, 80, 81, 99]
  halvings = [0, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
  want = [0.5 / 2 ** k for k in halvings]
  got = [square_lib.p_schedule(i, 100, 0.5, rescale=True) for i in its]
  assert got == want
  traced = square_lib.p_schedule(jnp.arange(100), 100, 0.5, rescale=True)
  np.testing.assert_allclose(
      traced, [square_lib.p_schedule(i, 100, 0.5, True) for i in range(100)],
      rtol=1e-6)


def test_square_sides():
  sides = [square_lib.square_side(square_lib.p_schedule(i, 5000), 32, 32)
           for i in range(5000)]
  assert list(dict.fromkeys(sides)) == [29, 20, 14, 10, 7, 5, 4, 3]
  ps = square_lib.p_schedule(jnp.arange(5000), 5000)
  np.testing.assert_array_equal(square_lib.square_side(ps, 32, 32), sides)
  # Capped at the shorter image side; at least 1.
  assert square_lib.square_side(1.5, 4, 4) == 4  # round(sqrt(24)) = 5
  assert square_lib.square_side(0.8, 4, 40) == 4  # round(sqrt(128)) = 11
  assert square_lib.square_side(1e-4, 8, 8) == 1
  np.testing.assert_array_equal(
      square_lib.square_side(jnp.array([1.5, 1e-4]), 4, 4), [4, 1])


def test_margin_matches_hand_computation():
  logits = jnp.array([[3.0, 1.0, 0.5, -1.0, 2.0],
                      [0.0, 4.0, 1.0, 2.0, -2.0],
                      [1.0, 1.0, 0.0, 0.0, 0.0]])
  labels = jnp.array([0, 3, 1])
  np.testing.assert_allclose(square_lib.margin(logits, labels),
                             [3 - 2, 2 - 4, 0.0])


@pytest.fixture(scope='module', name='natural_model')
def natural_model_fixture():
  # pylint: disable-next=protected-access
  f, x, y = attacks_test._train_natural_model()
  return f, x[:_N], y[:_N]


@pytest.fixture(scope='module', name='attack')
def attack_fixture(natural_model):
  """`attack(n_queries, eps)` -> a jitted `(x, y, keys, active) -> (x_adv,
  fooled, queries)`, compiled once per setting for the whole module."""
  f = natural_model[0]

  @functools.cache
  def attack(n_queries, eps=_EPS):
    return jax.jit(lambda x, y, keys, active: square_lib.square(
        f, x, y, keys, eps=eps, n_queries=n_queries, active=active,
        return_queries=True))
  return attack


def _numpy(*arrays):
  return [np.asarray(a) for a in arrays]


def test_invariants_on_an_undefended_model(natural_model, attack):
  f, x, y = natural_model
  active = jnp.ones(_N, bool)
  # AutoAttack's budget: the loop stops once all points are fooled (here
  # after about 2100 iterations; 1000 leave ~45% robust on this model).
  x_adv, fooled, queries = _numpy(*attack(5000)(x, y, _keys(0), active))
  delta = np.abs(x_adv - np.asarray(x)).reshape(_N, -1).max(-1)
  assert np.all(delta <= _EPS + 1e-6)
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  assert np.all(pred[fooled] != np.asarray(y)[fooled])
  np.testing.assert_array_equal(x_adv[~fooled], np.asarray(x)[~fooled])
  assert 1 - fooled.mean() <= 0.05  # measured: 0% robust
  assert queries.max() < 5001  # stopped early


def test_same_keys_same_result_other_keys_other_result(natural_model,
                                                       attack):
  _, x, y = natural_model
  run, active = attack(300), jnp.ones(_N, bool)
  first = _numpy(*run(x, y, _keys(0), active))
  again = _numpy(*run(x, y, _keys(0), active))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  other = _numpy(*run(x, y, _keys(1), active))
  assert 0 < first[1].sum() < _N  # both outcomes occur
  assert np.any(first[0] != other[0])
  assert np.any(first[2] != other[2])


def test_examples_do_not_depend_on_their_batch(natural_model, attack):
  _, x, y = natural_model
  run, keys = attack(300), _keys(0)
  full = _numpy(*run(x, y, keys, jnp.ones(_N, bool)))
  assert 0 < full[1].sum() < _N
  # A sub-batch with the same per-example keys.
  half = _numpy(*run(x[::2], y[::2], keys[::2], jnp.ones(_N // 2, bool)))
  for a, b in zip(full, half):
    np.testing.assert_array_equal(a[::2], b)
  # Masking: active examples as in the full batch, inactive ones untouched.
  mask = np.arange(_N) % 3 != 0
  masked = _numpy(*run(x, y, keys, jnp.asarray(mask)))
  for a, b in zip(full, masked):
    np.testing.assert_array_equal(a[mask], b[mask])
  np.testing.assert_array_equal(masked[0][~mask], np.asarray(x)[~mask])
  assert not masked[1][~mask].any()
  assert np.all(masked[2][~mask] == 0)


def test_more_queries_extend_the_same_run(natural_model, attack):
  """Iteration t draws from fold_in(key, t + 1): a shorter run is a prefix."""
  _, x, y = natural_model
  active, keys = jnp.ones(_N, bool), _keys(0)
  x50, fooled50, q50 = _numpy(*attack(50)(x, y, keys, active))
  x300, fooled300, q300 = _numpy(*attack(300)(x, y, keys, active))
  assert (~fooled300).sum() <= (~fooled50).sum()
  assert np.all(fooled300[fooled50])
  np.testing.assert_array_equal(x50[fooled50], x300[fooled50])
  # Queries: 1 (init) + iterations until fooled, at most 1 + n_queries.
  # A point fooled at 0-based iteration t used t + 2 queries.
  assert fooled50.any() and 0 < fooled300.sum() < _N
  np.testing.assert_array_equal(fooled50, q300 <= 51)
  np.testing.assert_array_equal(q50[fooled50], q300[fooled50])
  assert np.all(q50[~fooled50] == 51) and np.all(q300[~fooled300] == 301)
  assert q300.min() >= 1


def _square(logits_fn, *args, **kwargs):
  """`square` under one `jit` (eager dispatch compiles every small op)."""
  return jax.jit(lambda *a: square_lib.square(logits_fn, *a, **kwargs))(*args)


def _toy(x_shape=(6, 8, 8, 3), seed=0):
  x = jax.random.uniform(jax.random.key(seed), x_shape, minval=0.2,
                         maxval=0.8)
  return x, jnp.zeros(x_shape[0], jnp.int32)


def test_never_fooled_model_returns_clean_inputs():
  x, _ = _toy()
  always_zero = lambda z: jnp.zeros((z.shape[0], 4)).at[:, 0].set(10.0)
  # Three points of class 0, never fooled; three misclassified when clean:
  # these count as fooled, keep their clean input and are not attacked.
  y = jnp.array([0, 0, 0, 1, 2, 3])
  keys = _keys(0, 6)
  for n in (0, 3):
    x_adv, fooled, queries = _square(
        always_zero, x, y, keys, eps=_EPS, n_queries=n, return_queries=True)
    np.testing.assert_array_equal(x_adv, x)
    np.testing.assert_array_equal(fooled, [False] * 3 + [True] * 3)
    np.testing.assert_array_equal(queries, [1 + n] * 3 + [0] * 3)
  # A square as large as the (non-square) image still works: vh = 0.
  assert square_lib.square_side(2.0, 4, 12) == 4
  x4, y4 = _toy((2, 4, 12, 3))
  x_adv, fooled = _square(always_zero, x4, y4, keys[:2], eps=_EPS,
                          n_queries=3, p_init=2.0)
  np.testing.assert_array_equal(x_adv, x4)
  assert not np.asarray(fooled).any()


def test_stripes_init():
  x, y = _toy()
  x = x.at[0, :, 0].set(1.0).at[1, :, 0].set(0.0)  # clipped columns
  keys = _keys(0, 6)
  # pylint: disable-next=protected-access
  init = np.asarray(square_lib._stripes_init(x, keys, _EPS))
  x = np.asarray(x)
  up, down = np.clip(x + _EPS, 0, 1), np.clip(x - _EPS, 0, 1)
  assert np.all((init == up) | (init == down))
  sign = np.sign(init - x)[2:]  # unclipped images: one sign per column
  assert np.all(sign == sign[:, :1]) and np.all(sign != 0)
  assert len(np.unique(sign)) == 2
  # A model fooled by any ε-move is fooled by the init, with one query.
  # Class 0 wins while the input stays within ε/2 of the clean one.
  moved = lambda z: jnp.stack(
      [_EPS / 2 - jnp.abs(z - x).max((1, 2, 3)), jnp.zeros(len(z))], -1)
  x_adv, fooled, queries = _square(
      moved, jnp.asarray(x), jnp.asarray(y), keys, eps=_EPS, n_queries=5,
      return_queries=True)
  assert np.asarray(fooled).all()
  np.testing.assert_array_equal(queries, np.ones(6))
  np.testing.assert_array_equal(x_adv, init)


def test_jits_once():
  traces = []
  w = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
  linear = lambda z: z.reshape(len(z), -1) @ w

  @jax.jit
  def run(x, y, keys):
    traces.append(1)
    return square_lib.square(linear, x, y, keys, eps=_EPS, n_queries=20)

  for seed in (0, 1):
    x, _ = _toy(seed=seed)
    run(x, jnp.argmax(linear(x), -1), _keys(seed, 6))
  assert len(traces) == 1
