"""FAB-T against the AutoAttack reference and attack invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import attacks_test  # the shared small CNN trained without defence
from jard.attacks import fab as fab_lib

_ETA = 1.05


# ---------------------------------------------------------------------------
# The projection.


def _project(t, w, b):
  return np.asarray(fab_lib.projection_linf(
      jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
      jnp.asarray(b, jnp.float32)))


def test_projection_matches_hand_computation():
  # The plane is w·z = b; d is the smallest L∞ step onto it inside [0, 1]^D.
  t = [[0.5, 0.5],  # (1) w·t = 1 > b = 0.8: lower w·z by 0.2 with
                    #     d = −λ(1, 1), 2λ = 0.2 -> d = (−0.1, −0.1).
       [0.05, 0.5],  # (2) w·t = 0.55, b = 0.3: lower by 0.25. 2λ = 0.25
                     #     gives λ = 0.125 > t₁ = 0.05: z₁ stops at 0
                     #     (d₁ = −0.05), z₂ does the remaining 0.2.
       [0.9, 0.2],  # (3) w = (−1, 2): w·t = −0.5, b = 0.5: raise by 1 with
                    #     d = λ(−1, 1): 3λ = 1 -> d = (−1/3, 1/3).
       [0.9, 0.9],  # (4) w = (−1, 2): w·t = 0.9, b = 1.5: raise by 0.6;
                    #     3λ = 0.6 gives λ = 0.2 > 1 − t₂ = 0.1: z₂ stops at
                    #     1 (+0.2 of w·z), z₁ does 0.4 -> d = (−0.4, 0.1).
       [0.5, 0.5],  # (5) b = 2.5: unreachable (w·z ≤ 2 in the box); the
                    #     reference returns the step to the best corner.
       [0.3, 0.6]]  # (6) w = 0: no move.
  w = [[1, 1], [1, 1], [-1, 2], [-1, 2], [1, 1], [0, 0]]
  b = [0.8, 0.3, 0.5, 1.5, 2.5, 0.7]
  want = [[-0.1, -0.1], [-0.05, -0.2], [-1 / 3, 1 / 3], [-0.4, 0.1],
          [0.5, 0.5], [0.0, 0.0]]
  np.testing.assert_allclose(_project(t, w, b), want, atol=1e-6)
  # A zero coordinate of w never moves; D = 3 takes 2 bisection steps.
  np.testing.assert_allclose(
      _project([[0.3, 0.6, 0.2]], [[0, 1, 0]], [0.5]), [[0, -0.1, 0]],
      atol=1e-6)


def _lp_linf_distance(t, w, b):
  """min ‖z − t‖∞ s.t. w·z = b, 0 ≤ z ≤ 1, as an LP over (z, s)."""
  dim = len(t)
  c = np.r_[np.zeros(dim), 1.0]
  eye = np.eye(dim)
  a_ub = np.block([[eye, -np.ones((dim, 1))], [-eye, -np.ones((dim, 1))]])
  res = optimize.linprog(c, a_ub, np.r_[t, -t], np.r_[w, 0.0][None], [b],
                         bounds=[(0, 1)] * dim + [(0, None)])
  return res.fun if res.status == 0 else None


@pytest.mark.parametrize('dim', [1, 2, 5, 16])
def test_projection_is_the_minimal_linf_step(dim):
  rng = np.random.default_rng(dim)
  n = 100
  t = rng.uniform(0, 1, (n, dim))
  t[:, 0] = np.where(rng.uniform(size=n) < 0.2, 0.0, t[:, 0])  # on the box
  w = rng.normal(size=(n, dim)) * (rng.uniform(size=(n, dim)) > 0.15)
  # b from a random point of the box: the plane meets the box.
  b = np.sum(w * rng.uniform(0, 1, (n, dim)), 1)
  d = _project(t, w, b).astype(np.float64)
  z = t + d
  assert np.all(z >= -1e-6) and np.all(z <= 1 + 1e-6)
  for i in range(n):
    if not np.any(w[i]):
      np.testing.assert_array_equal(d[i], 0.0)
      continue
    np.testing.assert_allclose(w[i] @ z[i], b[i], atol=1e-4)
    best = _lp_linf_distance(t[i], w[i], b[i])
    np.testing.assert_allclose(np.abs(d[i]).max(), best, atol=1e-5)
  if dim == 2:  # and against a dense sample of the plane inside the box
    for i in range(20):
      if w[i, 1] == 0:
        continue
      z0 = np.linspace(0, 1, 20001)
      z1 = (b[i] - w[i, 0] * z0) / w[i, 1]
      ok = (z1 >= 0) & (z1 <= 1)
      sampled = np.max(np.abs(np.stack([z0, z1], 1)[ok] - t[i]), 1).min()
      assert np.abs(d[i]).max() <= sampled + 1e-5


# ---------------------------------------------------------------------------
# A numpy transcription of the reference (projection_linf, targeted
# attack_single_run without random start, perturb's loop over targets).


def _reference_projection(t, w, b):
  n, dim = t.shape
  sign = 2 * ((w * t).sum(1) - b >= 0) - 1
  w, b = w * sign[:, None], b * sign
  a = (w < 0).astype(float)
  d = (a - t) * (w != 0)
  p = a - t * (2 * a - 1)
  indp = np.argsort(p, axis=1)
  b = b - (w * t).sum(1)
  b0 = (w * d).sum(1)
  indp2 = indp[:, ::-1]
  ws = np.take_along_axis(w, indp2, 1)
  bs2 = -ws * np.take_along_axis(d, indp2, 1)
  s = np.cumsum(np.abs(ws), 1)
  sb = np.cumsum(bs2, 1) + b0[:, None]
  b2 = sb[:, -1] - s[:, -1] * p[np.arange(n), indp[:, 0]]
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & (b - b2 <= 0)
  lb, ub = np.zeros(c2.sum()), np.full(c2.sum(), dim - 1.0)
  rows = np.arange(c2.sum())
  indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
  for _ in range(math.ceil(math.log2(dim))):
    mid = np.floor((lb + ub) / 2)
    k = mid.astype(int)
    cur = indp_[rows, dim - 1 - k]
    c = b_ - (sb_[rows, k] - s_[rows, k] * p_[rows, cur]) > 0
    lb, ub = np.where(c, mid, lb), np.where(c, ub, mid)
  lb = lb.astype(int)
  if c_l.any():
    lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
    d[c_l] = (2 * a[c_l] - 1) * lmbd
  lmbd = np.maximum((b[c2] - sb[c2, lb]) / (-s[c2, lb]), 0)[:, None]
  d[c2] = (np.minimum(lmbd, d[c2]) * a[c2]
           + np.maximum(-lmbd, d[c2]) * (1 - a[c2]))
  return d * (w != 0)


def _tanh_net(w):
  w1, w2 = w
  def logits(z):
    return np.tanh(z @ w1) @ w2
  def margin_grad(z, y, tgt):  # z_t − z_y and its gradient
    h = np.tanh(z @ w1)
    out = h @ w2
    rows = np.arange(len(z))
    diff = out[rows, tgt] - out[rows, y]
    g = ((w2[:, tgt] - w2[:, y]).T * (1 - h ** 2)) @ w1.T
    return diff, g
  return logits, margin_grad


def _reference_single_run(w, x, y, tgt, n_iter, alpha_max=0.1, eta=_ETA,
                          beta=0.9):
  logits, margin_grad = _tanh_net(w)
  bs = len(x)
  x0, x1 = x.copy(), x.copy()
  adv, res2 = x.copy(), np.full(bs, 1e10)
  for _ in range(n_iter):
    df, dg = margin_grad(x1, y, tgt)
    b = -df + (dg * x1).sum(1)
    d3 = _reference_projection(np.concatenate([x1, x0]),
                               np.concatenate([dg, dg]), np.r_[b, b])
    d1, d2 = d3[:bs], d3[bs:]
    a0 = np.maximum(np.abs(d3).max(1, keepdims=True), 1e-8)
    a1, a2 = a0[:bs], a0[bs:]
    alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0), alpha_max)
    x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha,
                 0, 1)
    is_adv = logits(x1).argmax(1) != y
    if is_adv.any():
      t = np.abs(x1[is_adv] - x0[is_adv]).max(1)
      better = t < res2[is_adv]
      idx = np.nonzero(is_adv)[0]
      adv[idx[better]] = x1[idx[better]]
      res2[idx[better]] = t[better]
      x1[is_adv] = x0[is_adv] + (x1[is_adv] - x0[is_adv]) * beta
  out = np.where((res2 < 1e10)[:, None], adv, x)
  return out, res2, x1


def _reference_perturb(w, x, y, eps, n_iter, n_target_classes):
  logits, _ = _tanh_net(w)
  out = x.copy()
  acc = logits(x).argmax(1) == y
  for rank in range(2, n_target_classes + 2):
    ind = np.nonzero(acc)[0]
    if not len(ind):
      break
    xs, ys = x[ind], y[ind]
    tgt = np.argsort(logits(xs), 1)[:, -rank]
    adv, _, _ = _reference_single_run(w, xs, ys, tgt, n_iter)
    res = np.abs(xs - adv).max(1)
    still = (logits(adv).argmax(1) == ys) | (res > eps)
    acc[ind[~still]] = False
    out[ind[~still]] = adv[~still]
  return out, ~acc


def test_fab_matches_a_numpy_port_of_the_reference():
  rng = np.random.default_rng(0)
  d, classes, b = 20, 6, 24
  w = (rng.normal(size=(d, 16)) * 3.0, rng.normal(size=(16, classes)))
  net = lambda z, m=np: m.tanh(z @ w[0]) @ w[1]
  x = rng.uniform(0.0, 1.0, size=(b, d))
  x[:, :3] = rng.integers(0, 2, (b, 3))  # some pixels on the box
  y = net(x).argmax(1)
  tgt = np.argsort(net(x), 1)[:, -2]
  n_iter, eps = 12, 0.08
  y_mixed = y.copy()
  y_mixed[:2] = (y[:2] + 1) % classes  # two points misclassified when clean
  jax.config.update('jax_enable_x64', True)  # exact comparison in float64
  try:
    f = lambda z: net(z, jnp)
    _, _, state = fab_lib.fab_targeted(
        f, jnp.asarray(x), jnp.asarray(y), jnp.asarray(tgt), eps=1.0,
        n_iter=n_iter, return_state=True)
    state = jax.tree.map(np.asarray, state)
    got_x, got_fooled = fab_lib.fab_t(
        f, jnp.asarray(x), jnp.asarray(y_mixed), jax.random.split(
            jax.random.key(0), b), eps=eps, n_iter=n_iter,
        n_target_classes=4)
    got_x, got_fooled = np.asarray(got_x), np.asarray(got_fooled)
    assert got_x.dtype == np.float64
  finally:
    jax.config.update('jax_enable_x64', False)
  want_best, want_norm, want_iter = _reference_single_run(w, x, y, tgt,
                                                          n_iter)
  found = want_norm < 1e10
  assert found.any() and len(np.unique(want_norm)) > 1
  np.testing.assert_allclose(state['best_norm'], want_norm, rtol=1e-9)
  np.testing.assert_allclose(state['best'], want_best, atol=1e-9)
  np.testing.assert_allclose(state['x_iter'], want_iter, atol=1e-9)
  want_x, want_fooled = _reference_perturb(w, x, y_mixed, eps, n_iter, 4)
  assert 2 < want_fooled.sum() < b
  np.testing.assert_array_equal(got_fooled, want_fooled)
  np.testing.assert_allclose(got_x, want_x, atol=1e-9)


# ---------------------------------------------------------------------------
# Affine models: FAB is exact up to the overshoot.


def _coefficients(n_iter, alpha_max=0.1, eta=_ETA, beta=0.9):
  """On an affine boundary at distance 1, x₁ = x₀ + c d*: FAB's recursion on
  c, and the smallest adversarial c it keeps."""
  c, best = 0.0, 1e10
  for _ in range(n_iter):
    a1 = max(1 - c, 1e-8)
    alpha = min(a1 / (a1 + 1.0), alpha_max)
    c = (c + eta * (1 - c)) * (1 - alpha) + eta * alpha
    if c > 1:
      best, c = min(best, c), beta * c
  return best


def test_fab_is_exact_on_an_affine_two_class_model():
  rng = np.random.default_rng(3)
  shape, n = (4, 4, 3), 16
  w = rng.normal(size=(48, 2)).astype(np.float32)
  c = rng.normal(size=2).astype(np.float32)
  f = lambda z: z.reshape(z.shape[0], -1) @ w + c
  x = rng.uniform(0.35, 0.65, (n,) + shape).astype(np.float32)
  logits = np.asarray(f(jnp.asarray(x)))
  y = logits.argmax(1)
  # The L∞ distance to z_t = z_y: |margin| / ‖w_t − w_y‖₁ (box not binding).
  exact = np.abs(logits[:, 0] - logits[:, 1]) / np.abs(w[:, 0] - w[:, 1]).sum()
  assert exact.max() < 0.3  # the box cannot bind
  run = jax.jit(lambda eps, n_iter: fab_lib.fab_targeted(
      f, jnp.asarray(x), jnp.asarray(y), jnp.asarray(1 - y), eps=eps,
      n_iter=n_iter, return_state=True), static_argnums=1)
  for n_iter in (1, 20):
    _, fooled, state = run(1.0, n_iter)
    assert np.asarray(fooled).all()
    np.testing.assert_allclose(state['best_norm'],
                               exact * _coefficients(n_iter), rtol=2e-4)
  # One overshoot, then the steps back settle at c ≈ 1.0052 from iteration 2.
  assert _coefficients(1) == _ETA and 1.005 < _coefficients(20) < 1.0053
  # Success exactly when ε covers the norm found.
  found = np.asarray(state['best_norm'])
  for scale, want in ((1.001, True), (0.999, False)):
    x_adv, fooled, _ = run(jnp.asarray(found * scale), 20)
    assert np.all(np.asarray(fooled) == want)
  delta = np.abs(np.asarray(x_adv) - x).reshape(n, -1).max(1)
  np.testing.assert_array_equal(delta, 0.0)  # not fooled: the clean input


def test_targets_are_the_2nd_to_last_ranked_clean_classes():
  # Four classes on x₀ = 0.5: z_y = 0 for y = 2; class 0 (2nd, z = −0.1)
  # needs 0.1 on feature 0 (‖w‖₁ = 1), class 3 (3rd, z = −0.3) only 0.03 on
  # features 1, 2 (‖w‖₁ = 10); class 1 (z = −1) cannot be reached.
  w = np.zeros((4, 4), np.float32)
  w[0, 0] = 1.0
  w[1:3, 3] = 5.0
  c = np.array([-0.6, -1.0, 0.0, -5.3], np.float32)
  f = lambda z: z.reshape(z.shape[0], -1) @ w + c
  x, y = jnp.full((1, 2, 2, 1), 0.5), jnp.array([2])
  keys = jax.random.split(jax.random.key(0), 1)
  run = jax.jit(lambda eps, k: fab_lib.fab_t(f, x, y, keys, eps=eps,
                                             n_iter=10, n_target_classes=k),
                static_argnums=1)
  x_adv, fooled = run(0.11, 1)  # the 2nd class only, at ≈ 0.1
  assert bool(fooled[0]) and int(jnp.argmax(f(x_adv), -1)[0]) == 0
  np.testing.assert_allclose(float(jnp.abs(x_adv - x).max()),
                             0.1 * _coefficients(10), rtol=1e-4)
  _, fooled = run(0.05, 1)  # the closer 3rd class is not tried
  assert not bool(fooled[0])
  x_adv, fooled = run(0.05, 2)  # ... until it is a target
  assert bool(fooled[0]) and int(jnp.argmax(f(x_adv), -1)[0]) == 3
  np.testing.assert_allclose(float(jnp.abs(x_adv - x).max()),
                             0.03 * _coefficients(10), rtol=1e-4)
  with pytest.raises(ValueError, match='n_target_classes'):
    run(0.05, 4)


def test_restarts_start_at_half_eps():
  # Restarts > 0 (not used by AutoAttack's FAB-T) start ε/2 away from x.
  f = lambda z: z.reshape(z.shape[0], -1)[:, :3] * jnp.array([1., 2., 3.])
  x = jnp.full((4, 2, 2, 3), 0.5).at[0].set(0.0)  # clipped at 0 for x[0]
  y, eps = jnp.array([2, 2, 2, 2]), 0.1
  keys = jax.random.split(jax.random.key(0), 4)
  _, _, state = fab_lib.fab_targeted(f, x, y, y, eps=eps, n_iter=0,
                                     key=keys, return_state=True)
  start = np.asarray(state['x_iter'])
  delta = start - np.asarray(x).reshape(4, -1)
  np.testing.assert_allclose(np.abs(delta).max(1)[1:], eps / 2, rtol=1e-6)
  assert start.min() >= 0 and start.max() <= 1
  assert np.all(start[0] >= 0) and np.abs(delta[0]).max() <= eps / 2
  # With restarts the target loop still returns valid, in-ε results.
  x_adv, fooled = jax.jit(lambda x: fab_lib.fab_t(
      f, x, y, keys, eps=eps, n_iter=5, n_target_classes=2,
      n_restarts=2))(x)
  delta = np.abs(np.asarray(x_adv - x)).reshape(4, -1).max(1)
  assert np.all(delta <= eps)
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  assert np.all(pred[np.asarray(fooled)] != 2)


# ---------------------------------------------------------------------------
# The undefended CNN.


@pytest.fixture(scope='module', name='natural_model')
def natural_model_fixture():
  return attacks_test._train_natural_model()  # pylint: disable=protected-access


@pytest.fixture(scope='module', name='fab_run')
def fab_run_fixture(natural_model):
  f = natural_model[0]
  traces = []

  def attack(x, y, keys, eps, active):
    traces.append(x.shape)
    return fab_lib.fab_t(f, x, y, keys, eps=eps, n_iter=20, active=active)

  return jax.jit(attack), traces


def test_fab_t_invariants_on_an_undefended_model(natural_model, fab_run):
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  run, traces = fab_run
  keys = jax.random.split(jax.random.key(0), 64)
  ones = jnp.ones((64,), bool)
  eps = 8 / 255
  x_adv, fooled = run(x, y, keys, eps, ones)
  delta = np.abs(np.asarray(x_adv - x)).reshape(64, -1).max(-1)
  assert np.all(delta <= eps)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  fooled = np.asarray(fooled)
  assert np.all(pred[fooled] != np.asarray(y)[fooled])
  np.testing.assert_array_equal(np.asarray(x_adv)[~fooled],
                                np.asarray(x)[~fooled])
  robust = 1 - fooled.mean()
  print(f'FAB-T (20 it.) robust accuracy at 8/255: {robust:.2%}; '
        f'‖δ‖∞ median {np.median(delta) * 255:.2f}/255')
  assert robust <= 0.05
  # Bitwise deterministic, and no retrace for another ε.
  again, fooled_again = run(x, y, keys, eps, ones)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(x_adv))
  np.testing.assert_array_equal(np.asarray(fooled_again), fooled)
  # Success counts only within ε: at 0.1/255 nothing is fooled although
  # the unconstrained attack (ε = 1) finds boundary points beyond it.
  tiny = 0.1 / 255
  x_tiny, fooled_tiny = run(x, y, keys, tiny, ones)
  assert not np.any(np.asarray(fooled_tiny))
  np.testing.assert_array_equal(np.asarray(x_tiny), np.asarray(x))
  x_free, fooled_free = run(x, y, keys, 1.0, ones)
  free = np.abs(np.asarray(x_free - x)).reshape(64, -1).max(-1)
  assert np.asarray(fooled_free).all() and free.min() > tiny
  assert len(traces) == 1


def test_fab_t_is_per_example_and_respects_active(natural_model, fab_run):
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  y = y.at[:4].set((y[:4] + 1) % 10)  # misclassified when clean
  run, _ = fab_run
  keys = jax.random.split(jax.random.key(1), 64)
  eps = 3 / 255  # some points survive
  x_adv, fooled = run(x, y, keys, eps, jnp.ones((64,), bool))
  x_adv, fooled = np.asarray(x_adv), np.asarray(fooled)
  assert fooled[:4].all() and 0 < (~fooled).sum()
  np.testing.assert_array_equal(x_adv[:4], np.asarray(x[:4]))
  sub = slice(2, 18)
  x_sub, fooled_sub = run(x[sub], y[sub], keys[sub], eps,
                          jnp.ones((16,), bool))
  np.testing.assert_array_equal(np.asarray(x_sub), x_adv[sub])
  np.testing.assert_array_equal(np.asarray(fooled_sub), fooled[sub])
  active = np.arange(64) % 3 != 0
  x_act, fooled_act = run(x, y, keys, eps, jnp.asarray(active))
  x_act, fooled_act = np.asarray(x_act), np.asarray(fooled_act)
  assert not fooled_act[~active].any()
  np.testing.assert_array_equal(x_act[~active], np.asarray(x)[~active])
  np.testing.assert_array_equal(x_act[active], x_adv[active])
  np.testing.assert_array_equal(fooled_act[active], fooled[active])


def test_untargeted_fab_goes_to_the_closest_boundary():
  """Untargeted FAB (AutoAttack `plus`): it linearises towards the class of
  smallest |z_k − z_y| / ‖∇(z_k − z_y)‖₁, here class 3 at 0.03, although
  class 0 has the 2nd largest logit (the model of the test above)."""
  w = np.zeros((4, 4), np.float32)
  w[0, 0] = 1.0
  w[1:3, 3] = 5.0
  c = np.array([-0.6, -1.0, 0.0, -5.3], np.float32)
  f = lambda z: z.reshape(z.shape[0], -1) @ w + c
  x, y = jnp.full((1, 2, 2, 1), 0.5), jnp.array([2])
  keys = jax.random.split(jax.random.key(0), 1)
  run = jax.jit(lambda eps, r: fab_lib.fab_untargeted(
      f, x, y, keys, eps=eps, n_iter=10, n_restarts=r), static_argnums=1)
  x_adv, fooled = run(0.05, 1)
  assert bool(fooled[0]) and int(jnp.argmax(f(x_adv), -1)[0]) == 3
  np.testing.assert_allclose(float(jnp.abs(x_adv - x).max()),
                             0.03 * _coefficients(10), rtol=1e-4)
  for restarts in (1, 3):  # below the distance: clean input, not fooled
    x_adv, fooled = run(0.02, restarts)
    assert not bool(fooled[0])
    np.testing.assert_array_equal(np.asarray(x_adv), np.asarray(x))


def test_untargeted_fab_invariants_on_an_undefended_model(natural_model):
  f, x, y = natural_model
  x, y = x[:32], y[:32]
  keys = jax.random.split(jax.random.key(2), 32)
  run = jax.jit(lambda eps, active: fab_lib.fab_untargeted(
      f, x, y, keys, eps=eps, n_iter=10, n_restarts=2, active=active))
  x_adv, fooled = run(8 / 255, jnp.ones(32, bool))
  x_adv, fooled = np.asarray(x_adv), np.asarray(fooled)
  assert fooled.mean() >= 0.95
  delta = np.abs(x_adv - np.asarray(x)).reshape(32, -1).max(1)
  assert delta.max() <= 8 / 255 + 1e-6
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  assert np.all(pred[fooled] != np.asarray(y)[fooled])
  active = np.arange(32) % 2 == 0
  masked_x, masked = run(8 / 255, jnp.asarray(active))
  assert not np.asarray(masked)[~active].any()
  np.testing.assert_array_equal(np.asarray(masked)[active], fooled[active])
  np.testing.assert_array_equal(np.asarray(masked_x)[~active],
                                np.asarray(x)[~active])
