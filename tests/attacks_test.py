"""Invariants of `jard.attacks`: ε-balls, bounds, keys, jit/vmap, strength.

Most tests attack a fixed random linear classifier on tiny 4x4x3 images, which
compiles in well under a second. The strength tests (PGD vs FGSM, ~0% robust
accuracy of an undefended model) train a small CNN for a few hundred SGD steps
on a synthetic 10-class dataset built so that a natural model is accurate but
not robust: class templates differ by ±0.03 around 0.5 (< ε = 8/255 ≈ 0.031),
so every template lies within ε (L∞) of the midpoint between any two classes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jard import attacks
from jard import losses

_B = 6
_SHAPE = (4, 4, 3)
_D = int(np.prod(_SHAPE))
_K = 5
# Per-example radii, including ε = 0, for each norm.
_EPS_PER_EXAMPLE = {
    'linf': np.array([0.0, 0.01, 0.03, 0.1, 0.2, 0.3], np.float32),
    'l2': np.array([0.0, 0.05, 0.2, 0.5, 1.0, 2.0], np.float32),
}
_EPS_SCALAR = {'linf': 0.1, 'l2': 0.5}
_STEP = {'linf': 0.04, 'l2': 0.3}


# ---------------------------------------------------------------------------
# Helpers.


def _linear_model(seed=0, scale=3.0):
  r = np.random.RandomState(seed)
  w = jnp.asarray(r.randn(_D, _K) * scale / np.sqrt(_D), jnp.float32)
  b = jnp.asarray(r.randn(_K) * 0.1, jnp.float32)
  return lambda x: x.reshape(x.shape[0], -1) @ w + b


def _images(seed=1, n=_B, low=0.0, high=1.0):
  """Uniform images; with the default range some pixels sit on the bounds."""
  r = np.random.RandomState(seed)
  x = r.uniform(low, high, (n,) + _SHAPE).astype(np.float32)
  if low == 0.0 and high == 1.0:
    x[:, 0, 0, 0] = 0.0
    x[:, 0, 1, 0] = 1.0
  return jnp.asarray(x)


def _labels(seed=2, n=_B):
  return jnp.asarray(np.random.RandomState(seed).randint(0, _K, n))


def _ce_fn(logits_fn, y):
  return lambda z: losses.cross_entropy(logits_fn(z), y)


def _delta_norm(x_adv, x, norm):
  d = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
  d = d.reshape(d.shape[0], -1)
  return np.abs(d).max(1) if norm == 'linf' else np.sqrt((d * d).sum(1))


def _eps(norm, kind):
  return (_EPS_SCALAR[norm] if kind == 'scalar'
          else jnp.asarray(_EPS_PER_EXAMPLE[norm]))


# ---------------------------------------------------------------------------
# ε-ball, bounds and per-example ε.


@pytest.mark.parametrize('eps_kind', ['scalar', 'per_example'])
@pytest.mark.parametrize('init', attacks.INITS)
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_pgd_stays_in_ball_and_bounds(norm, init, eps_kind):
  f, x, y = _linear_model(), _images(), _labels()
  eps = _eps(norm, eps_kind)
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(3), eps=eps,
                      step_size=_STEP[norm], steps=5, norm=norm, init=init)
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  radius = np.broadcast_to(np.asarray(eps), (_B,))
  assert np.all(_delta_norm(x_adv, x, norm) <= radius + 1e-6)
  assert np.all(np.asarray(x_adv) >= 0.0) and np.all(np.asarray(x_adv) <= 1.0)
  # The attack moved (every example with ε > 0) and raised the loss.
  moved = _delta_norm(x_adv, x, norm) > 0
  np.testing.assert_array_equal(moved, radius > 0)
  ce = _ce_fn(f, y)
  assert np.mean(ce(x_adv)) > np.mean(ce(x))
  if init == 'none' and norm == 'linf':
    # From x, sign-ascent steps on a convex loss never decrease it.
    assert np.all(np.asarray(ce(x_adv)) >= np.asarray(ce(x)) - 1e-5)
  if eps_kind == 'per_example':
    # ε = 0 leaves the example exactly unchanged.
    np.testing.assert_array_equal(x_adv[0], x[0])


@pytest.mark.parametrize('init', ['U', 'none'])
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_pgd_reaches_each_examples_own_radius(norm, init):
  # Pixels in [0.3, 0.7] and ε ≤ 0.3 keep the bounds inactive, and a
  # step much larger than ε lands every example on its own sphere.
  f, y = _linear_model(), _labels()
  x = _images(low=0.3, high=0.7)
  eps = {'linf': np.array([0.0, 0.01, 0.02, 0.05, 0.1, 0.2], np.float32),
         'l2': np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.3], np.float32)}[norm]
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(4),
                      eps=jnp.asarray(eps), step_size=10.0, steps=3,
                      norm=norm, init=init)
  np.testing.assert_allclose(_delta_norm(x_adv, x, norm), eps, atol=1e-6)
  if norm == 'linf':
    # Every coordinate is pushed to a corner of its own box.
    d = np.abs(np.asarray(x_adv) - np.asarray(x)).reshape(_B, -1)
    np.testing.assert_allclose(d, np.broadcast_to(eps[:, None], d.shape),
                               atol=1e-6)
  np.testing.assert_array_equal(x_adv[0], x[0])


@pytest.mark.parametrize('norm', attacks.NORMS)
def test_pgd_per_example_step_size(norm):
  f, y = _linear_model(), _labels()
  x = _images(low=0.3, high=0.7)
  alpha = np.array([0.0, 0.005, 0.01, 0.02, 0.04, 0.08], np.float32)
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(0), eps=1.0,
                      step_size=jnp.asarray(alpha), steps=1, norm=norm,
                      init='none')
  np.testing.assert_allclose(_delta_norm(x_adv, x, norm), alpha, atol=1e-6)


@pytest.mark.parametrize('init', attacks.INITS)
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_scalar_and_constant_per_example_eps_agree(norm, init):
  f, x, y = _linear_model(), _images(), _labels()
  kw = dict(step_size=_STEP[norm], steps=3, norm=norm, init=init)
  e = _EPS_SCALAR[norm]
  a = attacks.pgd(_ce_fn(f, y), x, jax.random.key(5), eps=e, **kw)
  b = attacks.pgd(_ce_fn(f, y), x, jax.random.key(5),
                  eps=jnp.full((_B,), e), **kw)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('init', ['U', 'N'])
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_random_start(norm, init):
  x = _images()
  eps = jnp.asarray(_EPS_PER_EXAMPLE[norm])
  x0 = attacks.random_start(x, jax.random.key(6), eps=eps, init=init,
                            norm=norm)
  dist = _delta_norm(x0, x, norm)
  if init == 'U':
    # Inside the ball and the bounds, strictly moved where ε > 0.
    assert np.all(dist <= np.asarray(eps) + 1e-6)
    assert np.all(np.asarray(x0) >= 0.0) and np.all(np.asarray(x0) <= 1.0)
    np.testing.assert_array_equal(dist > 0, np.asarray(eps) > 0)
  else:
    # x + 0.001·N(0, I), independent of ε and not clipped.
    d = (np.asarray(x0) - np.asarray(x)).ravel()
    assert 0.0007 < d.std() < 0.0013 and abs(d.mean()) < 3e-4
    on_bounds = attacks.random_start(jnp.zeros_like(x), jax.random.key(6),
                                     eps=eps, init=init, norm=norm)
    assert np.min(on_bounds) < -0.001  # Not clipped to the bounds.


def test_l2_uniform_start_fills_the_ball():
  # A uniform point of the d-ball has radius ε·u^(1/d): mostly near ε but
  # strictly inside, never a fixed-radius sphere.
  x = jnp.full((256,) + _SHAPE, 0.5)
  x0 = attacks.random_start(x, jax.random.key(7), eps=0.1, init='U',
                            norm='l2')
  r = _delta_norm(x0, x, 'l2') / 0.1
  assert np.all(r <= 1.0 + 1e-6) and r.min() < 0.97 and r.max() > 0.99
  np.testing.assert_allclose(np.mean(r), _D / (_D + 1.0), atol=0.01)


# ---------------------------------------------------------------------------
# Trivial cases and argument checking.


@pytest.mark.parametrize('norm', attacks.NORMS)
def test_steps_zero_init_none_returns_x(norm):
  f, x, y = _linear_model(), _images(), _labels()
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(0),
                      eps=_EPS_SCALAR[norm], step_size=_STEP[norm], steps=0,
                      norm=norm, init='none')
  np.testing.assert_array_equal(x_adv, x)
  # And ε = 0 with steps: still x exactly.
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(0), eps=0.0,
                      step_size=_STEP[norm], steps=3, norm=norm, init='U')
  np.testing.assert_array_equal(x_adv, x)


def test_steps_zero_init_u_returns_the_random_start():
  f, x, y = _linear_model(), _images(), _labels()
  key = jax.random.key(8)
  x_adv = attacks.pgd(_ce_fn(f, y), x, key, eps=0.1, step_size=0.01,
                      steps=0, init='U')
  np.testing.assert_allclose(
      x_adv, attacks.random_start(x, key, eps=0.1, init='U'), atol=1e-7)


@pytest.mark.parametrize('norm', attacks.NORMS)
def test_steps_zero_init_n_is_still_a_valid_point(norm):
  # The 'N' start is not clipped; with no step to project it, pgd must still
  # return a point of the ε-ball and the bounds (ε = 0: x itself).
  f, y = _linear_model(), _labels()
  x = jnp.zeros((_B,) + _SHAPE).at[:, 0].set(1.0)
  eps = jnp.asarray([0.0, 0.0, 1e-4, 1e-4, 0.1, 0.1])
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(8), eps=eps,
                      step_size=0.01, steps=0, norm=norm, init='N')
  assert np.all(_delta_norm(x_adv, x, norm) <= np.asarray(eps) + 1e-7)
  assert np.all(np.asarray(x_adv) >= 0.0) and np.all(np.asarray(x_adv) <= 1.0)
  np.testing.assert_array_equal(x_adv[:2], x[:2])


@pytest.mark.parametrize('kwargs', [
    dict(norm='l1'), dict(init='uniform'), dict(steps=-1), dict(steps=2.0)])
def test_invalid_arguments_raise(kwargs):
  f, x, y = _linear_model(), _images(), _labels()
  kw = dict(eps=0.1, step_size=0.01, steps=1)
  kw.update(kwargs)
  with pytest.raises(ValueError):
    attacks.pgd(_ce_fn(f, y), x, jax.random.key(0), **kw)


# ---------------------------------------------------------------------------
# Keys.


@pytest.mark.parametrize('init', attacks.INITS)
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_deterministic_for_a_key(norm, init):
  f, x, y = _linear_model(), _images(), _labels()
  run = lambda key: attacks.pgd(_ce_fn(f, y), x, key, eps=_EPS_SCALAR[norm],
                                step_size=_STEP[norm] / 4, steps=2,
                                norm=norm, init=init)
  a, b, c = run(jax.random.key(9)), run(jax.random.key(9)), run(
      jax.random.key(10))
  np.testing.assert_array_equal(a, b)
  if init == 'none':
    np.testing.assert_array_equal(a, c)  # The key is unused.
  else:
    assert not np.allclose(a, c)


@pytest.mark.parametrize('init', ['U', 'N'])
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_per_example_keys_make_examples_batch_independent(norm, init):
  f, x, y = _linear_model(), _images(), _labels()
  keys = jax.random.split(jax.random.key(11), _B)
  eps = jnp.asarray(_EPS_PER_EXAMPLE[norm]) + 0.01
  kw = dict(step_size=_STEP[norm] / 4, steps=3, norm=norm, init=init)
  full = attacks.pgd(_ce_fn(f, y), x, keys, eps=eps, **kw)
  sub = slice(2, 5)
  part = attacks.pgd(_ce_fn(f, y[sub]), x[sub], keys[sub], eps=eps[sub], **kw)
  np.testing.assert_allclose(full[sub], part, atol=1e-6)
  # The random start of one example with the same key in another batch
  # position gives the same start (keys, not positions, decide it).
  perm = np.array([3, 0, 5, 1, 4, 2])
  starts = attacks.random_start(x, keys, eps=eps, init=init, norm=norm)
  starts_perm = attacks.random_start(x[perm], keys[perm], eps=eps[perm],
                                     init=init, norm=norm)
  np.testing.assert_allclose(starts[perm], starts_perm, atol=1e-7)
  # Distinct keys give distinct noise to identical inputs.
  same = jnp.broadcast_to(x[:1], x.shape)
  s = attacks.random_start(same, keys, eps=0.1, init=init, norm=norm)
  assert not np.allclose(s[0], s[1])


# ---------------------------------------------------------------------------
# FGSM and CW∞.


@pytest.mark.parametrize('eps_kind', ['scalar', 'per_example'])
@pytest.mark.parametrize('norm', attacks.NORMS)
def test_fgsm_is_one_step_of_size_eps(norm, eps_kind):
  f, x, y = _linear_model(), _images(), _labels()
  eps = _eps(norm, eps_kind)
  x_adv = attacks.fgsm(_ce_fn(f, y), x, eps=eps, norm=norm)
  g = np.asarray(jax.grad(lambda z: jnp.sum(_ce_fn(f, y)(z)))(x), np.float64)
  e = np.broadcast_to(np.asarray(eps, np.float64), (_B,))[:, None, None,
                                                          None]
  if norm == 'linf':
    step = np.sign(g)
  else:
    step = g / np.sqrt((g * g).sum(axis=(1, 2, 3), keepdims=True))
  want = np.clip(np.asarray(x, np.float64) + e * step, 0.0, 1.0)
  np.testing.assert_allclose(x_adv, want, atol=1e-6)


def test_cw_inf_increases_margin_loss_and_stays_in_ball():
  f, x, y = _linear_model(scale=10.0), _images(), _labels()
  eps = 8 / 255
  x_adv = attacks.cw_inf(f, x, y, jax.random.key(12), eps=eps, steps=10)
  clean = np.asarray(losses.margin_loss(f(x), y))
  adv = np.asarray(losses.margin_loss(f(x_adv), y))
  assert np.all(adv >= clean - 1e-5) and np.mean(adv) > np.mean(clean) + 0.1
  assert np.all(_delta_norm(x_adv, x, 'linf') <= eps + 1e-6)
  assert np.all(np.asarray(x_adv) >= 0.0) and np.all(np.asarray(x_adv) <= 1.0)
  # Without the random start the margin loss is monotone in the steps here
  # (a linear model: the objective is convex in x).
  a5 = attacks.cw_inf(f, x, y, jax.random.key(12), eps=eps, steps=5,
                      init='none')
  a20 = attacks.cw_inf(f, x, y, jax.random.key(12), eps=eps, steps=20,
                       init='none')
  m5 = np.asarray(losses.margin_loss(f(a5), y))
  m20 = np.asarray(losses.margin_loss(f(a20), y))
  assert np.all(m20 >= m5 - 1e-5) and np.all(m5 >= clean - 1e-5)


# ---------------------------------------------------------------------------
# jit and vmap.


def test_pgd_under_jit_traces_once_with_traced_eps():
  f = _linear_model()
  traces = []

  @jax.jit
  def attack(x, y, eps, keys):
    traces.append(None)
    return attacks.pgd(_ce_fn(f, y), x, keys, eps=eps, step_size=eps / 4,
                       steps=4, init='U')

  outs = []
  for seed in (0, 1):
    x, y = _images(seed=20 + seed), _labels(seed=30 + seed)
    eps = jnp.asarray(_EPS_PER_EXAMPLE['linf'] + 0.01 * seed)
    keys = jax.random.split(jax.random.key(seed), _B)
    x_adv = attack(x, y, eps, keys)
    assert np.all(_delta_norm(x_adv, x, 'linf') <= np.asarray(eps) + 1e-6)
    eager = attacks.pgd(_ce_fn(f, y), x, keys, eps=eps, step_size=eps / 4,
                        steps=4, init='U')
    np.testing.assert_allclose(x_adv, eager, atol=1e-6)
    outs.append(x_adv)
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[1])


def test_pgd_under_vmap_matches_a_loop():
  f = _linear_model()
  n = 3
  xs = jnp.stack([_images(seed=40 + i) for i in range(n)])
  ys = jnp.stack([_labels(seed=50 + i) for i in range(n)])
  eps = jnp.stack([jnp.asarray(_EPS_PER_EXAMPLE['l2']) * (i + 1) / n
                   for i in range(n)])
  keys = jax.random.split(jax.random.key(13), (n, _B))

  def attack(x, y, e, k):
    return attacks.pgd(_ce_fn(f, y), x, k, eps=e, step_size=0.1, steps=3,
                       norm='l2', init='U')

  batched = jax.jit(jax.vmap(attack))(xs, ys, eps, keys)
  for i in range(n):
    np.testing.assert_allclose(batched[i], attack(xs[i], ys[i], eps[i],
                                                  keys[i]), atol=1e-6)


# ---------------------------------------------------------------------------
# Attack strength on a naturally trained CNN.

_NUM_CLASSES = 10
_IMG = (8, 8, 3)
_AMPLITUDE = 0.03  # < 8/255: templates are not robustly separable at ε.
_NOISE = 0.05


class _SmallCNN(nn.Module):
  """conv3x3(16)-ReLU-dense; inputs normalised inside, as jard models do."""

  @nn.compact
  def __call__(self, x):
    x = (x - 0.5) * 10.0
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    return nn.Dense(_NUM_CLASSES)(x.reshape(x.shape[0], -1))


def _synthetic(templates, n, seed):
  r = np.random.RandomState(seed)
  y = r.randint(0, _NUM_CLASSES, n)
  x = np.clip(templates[y] + _NOISE * r.randn(n, *_IMG), 0.0, 1.0)
  return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def _train_natural_model():
  """A CNN trained with plain CE; returns (logits_fn, x_test, y_test)."""
  templates = 0.5 + _AMPLITUDE * np.sign(
      np.random.RandomState(0).randn(_NUM_CLASSES, *_IMG))
  x_train, y_train = _synthetic(templates, 2048, seed=1)
  x_test, y_test = _synthetic(templates, 256, seed=2)
  model = _SmallCNN()
  params = model.init(jax.random.key(0), x_train[:1])
  opt = optax.sgd(0.05, momentum=0.9)
  opt_state = opt.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss_fn = lambda p: jnp.mean(losses.cross_entropy(model.apply(p, x), y))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch = 128
  for i in range(200):
    j = (i * batch) % x_train.shape[0]
    params, opt_state = train_step(params, opt_state, x_train[j:j + batch],
                                   y_train[j:j + batch])
  logits_fn = jax.jit(lambda x: model.apply(params, x))
  return logits_fn, x_test, y_test


@pytest.fixture(scope='module', name='natural_model')
def natural_model_fixture():
  return _train_natural_model()


def _accuracy(logits_fn, x, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))


def _mean_ce(logits_fn, x, y):
  return float(jnp.mean(losses.cross_entropy(logits_fn(x), y)))


def test_undefended_model_has_near_zero_robust_accuracy(natural_model):
  f, x, y = natural_model
  assert _accuracy(f, x, y) >= 0.9
  eps = 8 / 255
  x_adv = attacks.pgd(_ce_fn(f, y), x, jax.random.key(14), eps=eps,
                      step_size=2 / 255, steps=20, init='U')
  assert np.all(_delta_norm(x_adv, x, 'linf') <= eps + 1e-6)
  assert _accuracy(f, x_adv, y) <= 0.02


def test_pgd20_beats_pgd5_beats_fgsm_and_clean(natural_model):
  f, x, y = natural_model
  eps = 8 / 255
  pgd = lambda steps: attacks.pgd(_ce_fn(f, y), x, jax.random.key(0),
                                  eps=eps, step_size=2 / 255, steps=steps,
                                  init='none')
  clean = _mean_ce(f, x, y)
  fgsm = _mean_ce(f, attacks.fgsm(_ce_fn(f, y), x, eps=eps), y)
  pgd5 = _mean_ce(f, pgd(5), y)
  pgd20 = _mean_ce(f, pgd(20), y)
  assert pgd20 >= fgsm > clean
  assert pgd20 >= pgd5 > clean
