"""Tests for `jard.losses` against independent float64 numpy references.

Every reference below is written from the formula (or the official PyTorch
code) directly, without calling into `jard`, so a wrong sign, a wrong
reduction, a wrong argument order or a wrongly detached term fails a test.
"""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from jard import losses

_RTOL = 1e-5
_ATOL = 1e-6


# ---------------------------------------------------------------------------
# Independent numpy references (float64).


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(axis=-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _np_kl_terms(p, log_q):
  """Per-class p (log p - log q), with 0 log 0 = 0 written out explicitly."""
  p = np.asarray(p, np.float64)
  log_q = np.asarray(log_q, np.float64)
  out = np.zeros_like(p)
  for i in range(p.shape[0]):
    for c in range(p.shape[1]):
      if p[i, c] > 0:
        out[i, c] = p[i, c] * (np.log(p[i, c]) - log_q[i, c])
  return out


def _np_reduce(terms, reduction):
  b, c = terms.shape
  return {
      'none': terms.sum(axis=1),
      'bm': terms.sum() / b,
      'em': terms.sum() / (b * c),
      'sum': terms.sum(),
  }[reduction]


def _np_ce(logits, labels):
  return -_np_log_softmax(logits)[np.arange(len(labels)), labels]


def _np_cwloss(logits, labels, kappa):
  """IAD/GAIRAT `cwloss`, per example (before its final sum)."""
  logits = np.asarray(logits, np.float64)
  onehot = np.eye(logits.shape[1])[labels]
  real = (onehot * logits).sum(1)
  other = ((1.0 - onehot) * logits - onehot * 10000.0).max(1)
  return -np.maximum(real - other + kappa, 0.0)


def _np_trades(clean_logits, adv_logits, labels, beta):
  p = _np_softmax(clean_logits)
  kl = _np_kl_terms(p, _np_log_softmax(adv_logits)).sum(1)
  return _np_ce(clean_logits, labels) + beta * kl


def _np_mart(clean_logits, adv_logits, labels, beta):
  """The official YisenWang/MART `mart_loss`, per example (before the mean)."""
  labels = np.asarray(labels)
  idx = np.arange(len(labels))
  adv_probs = _np_softmax(adv_logits)
  tmp1 = np.argsort(adv_probs, axis=1, kind='stable')[:, -2:]
  new_y = np.where(tmp1[:, -1] == labels, tmp1[:, -2], tmp1[:, -1])
  loss_adv = (_np_ce(adv_logits, labels) -
              np.log(1.0001 - adv_probs + 1e-12)[idx, new_y])
  nat_probs = _np_softmax(clean_logits)
  true_probs = nat_probs[idx, labels]
  kl = _np_kl_terms(nat_probs, np.log(adv_probs + 1e-12)).sum(1)
  loss_robust = kl * (1.0000001 - true_probs)
  return loss_adv + beta * loss_robust


# ---------------------------------------------------------------------------
# Fixtures.

_B, _C = 4, 5


def _logits(seed, scale=2.0, shape=(_B, _C)):
  return np.random.RandomState(seed).randn(*shape).astype(np.float32) * scale


def _target_with_zero():
  """A target distribution whose rows include exact zeros (and a one-hot)."""
  p = _np_softmax(_logits(0)).astype(np.float32)
  p[0] = [0.5, 0.0, 0.25, 0.25, 0.0]
  p[1] = [0.0, 0.0, 1.0, 0.0, 0.0]
  return p


# ---------------------------------------------------------------------------
# KL divergence.


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_kl_divergence_matches_numpy(reduction):
  p = _target_with_zero()
  log_q = _np_log_softmax(_logits(1)).astype(np.float32)
  got = losses.kl_divergence(jnp.asarray(p), jnp.asarray(log_q),
                             reduction=reduction)
  want = _np_reduce(_np_kl_terms(p, log_q), reduction)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=_RTOL, atol=_ATOL)
  assert got.shape == ((_B,) if reduction == 'none' else ())


def test_kl_divergence_zero_target_is_zero_not_nan():
  # A target that is one-hot: KL = -log q_y, with no 0 * log 0 NaN.
  p = np.eye(_C, dtype=np.float32)[[0, 3]]
  log_q = _np_log_softmax(_logits(2, shape=(2, _C))).astype(np.float32)
  got = losses.kl_divergence(jnp.asarray(p), jnp.asarray(log_q))
  np.testing.assert_allclose(got, -log_q[[0, 1], [0, 3]], rtol=_RTOL)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
@pytest.mark.parametrize('temperature', [1.0, 4.0, 30.0])
def test_distillation_kl_matches_numpy(reduction, temperature):
  t = _logits(3, scale=10.0)
  s = _logits(4, scale=10.0)
  got = losses.distillation_kl(jnp.asarray(t), jnp.asarray(s),
                               temperature=temperature, reduction=reduction)
  p = _np_softmax(t / temperature)
  log_q = _np_log_softmax(s / temperature)
  want = _np_reduce(_np_kl_terms(p, log_q), reduction)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_distillation_kl_temperature_30_fixed_logits():
  # Hand-checkable values: τ = 30 flattens both distributions strongly.
  t = np.array([[30.0, 0.0, -30.0], [0.0, 0.0, 0.0]], np.float32)
  s = np.array([[0.0, 30.0, 0.0], [60.0, 0.0, 0.0]], np.float32)
  got = losses.distillation_kl(jnp.asarray(t), jnp.asarray(s),
                               temperature=30.0)
  # softmax([1, 0, -1]) vs softmax([0, 1, 0]); uniform vs softmax([2, 0, 0]).
  p0 = np.exp([1.0, 0.0, -1.0]) / np.exp([1.0, 0.0, -1.0]).sum()
  lq0 = np.array([0.0, 1.0, 0.0]) - np.log(np.exp([0.0, 1.0, 0.0]).sum())
  p1 = np.full(3, 1 / 3)
  lq1 = np.array([2.0, 0.0, 0.0]) - np.log(np.exp([2.0, 0.0, 0.0]).sum())
  want = [np.sum(p0 * (np.log(p0) - lq0)), np.sum(p1 * (np.log(p1) - lq1))]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # And it differs from τ = 1 (the temperature is actually applied).
  got_t1 = losses.distillation_kl(jnp.asarray(t), jnp.asarray(s))
  assert not np.allclose(got, got_t1, rtol=1e-2)


def test_em_is_bm_over_classes():
  t, s = jnp.asarray(_logits(5)), jnp.asarray(_logits(6))
  bm = losses.distillation_kl(t, s, temperature=30.0, reduction='bm')
  em = losses.distillation_kl(t, s, temperature=30.0, reduction='em')
  np.testing.assert_allclose(em, bm / _C, rtol=1e-6)
  none = losses.distillation_kl(t, s, temperature=30.0, reduction='none')
  total = losses.distillation_kl(t, s, temperature=30.0, reduction='sum')
  np.testing.assert_allclose(bm, np.sum(none) / _B, rtol=1e-6)
  np.testing.assert_allclose(total, np.sum(none), rtol=1e-6)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_kl_of_a_distribution_with_itself_is_zero(reduction):
  z = jnp.asarray(_logits(7))
  got = losses.distillation_kl(z, z, temperature=3.0, reduction=reduction)
  np.testing.assert_allclose(got, np.zeros_like(got), atol=1e-6)
  # With zeros in the target: those classes contribute 0 whatever log q is
  # (finite here; a log q of -inf gives NaN, as in PyTorch).
  p = _target_with_zero()
  log_p = jnp.log(jnp.maximum(jnp.asarray(p), 1e-30))
  got = losses.kl_divergence(jnp.asarray(p), log_p, reduction=reduction)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, np.zeros_like(got), atol=1e-6)


def test_kl_is_positive_and_asymmetric():
  a, b = jnp.asarray(_logits(8)), jnp.asarray(_logits(9))
  ab = losses.distillation_kl(a, b)
  ba = losses.distillation_kl(b, a)
  assert np.all(ab > 0) and np.all(ba > 0)
  assert not np.allclose(ab, ba, rtol=1e-3)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
def test_kl_jit_parity(reduction):
  t, s = jnp.asarray(_logits(10)), jnp.asarray(_logits(11))
  fn = lambda t, s: losses.distillation_kl(t, s, temperature=30.0,
                                           reduction=reduction)
  # float32: XLA's fusion under jit may reorder sums (KL at τ = 30 is ~1e-3).
  np.testing.assert_allclose(jax.jit(fn)(t, s), fn(t, s), rtol=2e-5,
                             atol=1e-7)
  p = jnp.asarray(_target_with_zero())
  log_q = jax.nn.log_softmax(s)
  kl = lambda p, lq: losses.kl_divergence(p, lq, reduction=reduction)
  np.testing.assert_allclose(jax.jit(kl)(p, log_q), kl(p, log_q), rtol=2e-5,
                             atol=1e-7)


@pytest.mark.parametrize('bad', ['mean', 'batchmean', 'BM', ''])
def test_invalid_reduction_raises(bad):
  t = jnp.asarray(_logits(12))
  with pytest.raises(ValueError, match='reduction'):
    losses.distillation_kl(t, t, reduction=bad)
  with pytest.raises(ValueError, match='reduction'):
    losses.kl_divergence(jax.nn.softmax(t), jax.nn.log_softmax(t),
                         reduction=bad)


@pytest.mark.parametrize('reduction', losses.REDUCTIONS)
@pytest.mark.parametrize('temperature', [1.0, 30.0])
def test_distillation_kl_student_gradients(reduction, temperature):
  t = jnp.asarray(_logits(13))
  s = jnp.asarray(_logits(14))
  fn = lambda s: losses.distillation_kl(t, s, temperature=temperature,
                                        reduction=reduction)
  jtu.check_grads(fn, (s,), order=1, modes=('fwd', 'rev'), eps=1e-2,
                  atol=1e-2, rtol=1e-2)
  # The analytic gradient wrt the student logits: (q - p) / τ, per example.
  if reduction == 'none':
    fn = lambda s: jnp.sum(losses.distillation_kl(
        t, s, temperature=temperature))
  grad = jax.grad(fn)(s)
  want = (_np_softmax(np.asarray(s) / temperature) -
          _np_softmax(np.asarray(t) / temperature)) / temperature
  want = want / {'none': 1, 'sum': 1, 'bm': _B, 'em': _B * _C}[reduction]
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def test_kl_divergence_log_prediction_gradients():
  p = jnp.asarray(_target_with_zero())
  log_q = jnp.asarray(_np_log_softmax(_logits(15)), jnp.float32)
  fn = lambda lq: losses.kl_divergence(p, lq, reduction='bm')
  jtu.check_grads(fn, (log_q,), order=1, modes=('rev',), eps=1e-2,
                  atol=1e-3, rtol=1e-3)
  np.testing.assert_allclose(jax.grad(fn)(log_q), -np.asarray(p) / _B,
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Cross-entropy and the CW margin.


def test_cross_entropy_matches_numpy():
  logits = _logits(20, scale=5.0)
  labels = np.array([0, 4, 2, 2])
  got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, _np_ce(logits, labels), rtol=1e-5)
  # Large logits: no overflow.
  big = logits * 100.0
  got = losses.cross_entropy(jnp.asarray(big), jnp.asarray(labels))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, _np_ce(big, labels), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize('kappa', [0.0, 5.0, 50.0])
def test_margin_loss_matches_iad_cwloss(kappa):
  logits = np.array([
      [1.0, 2.0, 3.0, 0.0],      # y = 0 wrong: margin -2
      [10.0, 1.0, -2.0, 3.0],    # y = 0 correct: margin 7
      [70.0, 0.0, 1.0, 0.0],     # y = 2 wrong by 69 > 50: saturated
      [-5.0, -6.0, -7.0, -8.0],  # y = 3, all negative: the -1e4 mask matters
  ], np.float32)
  labels = np.array([0, 0, 2, 3])
  got = losses.margin_loss(jnp.asarray(logits), jnp.asarray(labels),
                           kappa=kappa)
  want = _np_cwloss(logits, labels, kappa)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Spot values by hand: -max(z_y - max_{k≠y} z_k + κ, 0).
  np.testing.assert_allclose(
      got, -np.maximum(np.array([-2.0, 7.0, -69.0, -3.0]) + kappa, 0.0),
      rtol=1e-6)
  if kappa == 50.0:
    assert got[1] == -57.0
    assert got[2] == 0.0  # another class leads by 69 > κ: saturated.
    assert got[3] == -47.0  # other = -5 (not 0 from the masked zeros).


def test_margin_loss_gradient_zero_when_saturated():
  # Example 0: class 0 leads the label by 100 > κ, the attack objective is
  # at its maximum 0 and gives no gradient.
  logits = jnp.array([[100.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([1, 1])
  g = jax.grad(lambda z: jnp.sum(losses.margin_loss(z, labels)))(logits)
  np.testing.assert_allclose(g[0], 0.0)
  # Unsaturated: d/dz of -(z_y - z_other + κ) is -1 on y, +1 on the argmax.
  assert g[1, 1] == -1.0 and np.sum(np.abs(g[1])) == 2.0


# ---------------------------------------------------------------------------
# TRADES.


def _np_finite_difference(fn, z, eps=1e-6):
  z = np.asarray(z, np.float64)
  grad = np.zeros_like(z)
  for idx in np.ndindex(z.shape):
    zp, zm = z.copy(), z.copy()
    zp[idx] += eps
    zm[idx] -= eps
    grad[idx] = (fn(zp) - fn(zm)) / (2 * eps)
  return grad


@pytest.mark.parametrize('beta', [1.0, 6.0])
def test_trades_loss_matches_numpy(beta):
  clean, adv = _logits(30), _logits(31)
  labels = np.array([0, 1, 4, 3])
  got = losses.trades_loss(jnp.asarray(clean), jnp.asarray(adv),
                           jnp.asarray(labels), beta=beta)
  np.testing.assert_allclose(got, _np_trades(clean, adv, labels, beta),
                             rtol=1e-5)
  # The batch mean is CE_mean + β·bm KL (the reference's reduction).
  want = (np.mean(_np_ce(clean, labels)) + beta *
          _np_reduce(_np_kl_terms(_np_softmax(clean),
                                  _np_log_softmax(adv)), 'bm'))
  np.testing.assert_allclose(np.mean(got), want, rtol=1e-5)


def test_trades_loss_clean_target_not_detached():
  clean, adv = _logits(32), _logits(33)
  labels = np.array([2, 0, 1, 4])
  beta = 6.0
  y = jnp.asarray(labels)
  grad = jax.grad(lambda c: jnp.sum(
      losses.trades_loss(c, jnp.asarray(adv), y, beta=beta)))(
          jnp.asarray(clean))
  want = _np_finite_difference(
      lambda c: _np_trades(c, adv, labels, beta).sum(), clean)
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-4)
  # With a detached KL target the gradient would be that of CE alone; the
  # finite difference of the full formula must differ from that.
  ce_only = _np_finite_difference(
      lambda c: _np_ce(c, labels).sum(), clean)
  assert np.max(np.abs(want - ce_only)) > 1e-1
  # The KL part alone carries gradient into the clean logits.
  kl_grad = jax.grad(lambda c: jnp.sum(
      losses.trades_loss(c, jnp.asarray(adv), y, beta=beta) -
      losses.cross_entropy(c, y)))(jnp.asarray(clean))
  assert np.max(np.abs(kl_grad)) > 1e-1
  # Gradient wrt the adversarial logits: β (q' - p).
  grad_adv = jax.grad(lambda a: jnp.sum(
      losses.trades_loss(jnp.asarray(clean), a, y, beta=beta)))(
          jnp.asarray(adv))
  np.testing.assert_allclose(
      grad_adv, beta * (_np_softmax(adv) - _np_softmax(clean)),
      rtol=1e-4, atol=1e-6)


def test_trades_loss_equal_logits_is_ce():
  z = _logits(34)
  labels = np.array([0, 1, 2, 3])
  got = losses.trades_loss(jnp.asarray(z), jnp.asarray(z),
                           jnp.asarray(labels))
  np.testing.assert_allclose(got, _np_ce(z, labels), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# MART.


def _mart_case():
  """Examples where argmax p' is y and where it is not."""
  clean = _logits(40, shape=(6, _C))
  adv = np.array([
      [4.0, 1.0, 0.5, -1.0, 0.0],   # y = 0, top = y: runner-up 1
      [4.0, 1.0, 0.5, -1.0, 0.0],   # y = 2, top = 0 ≠ y
      [0.0, 0.2, 0.1, 3.0, 2.5],    # y = 3, top = y: runner-up 4
      [0.0, 0.2, 0.1, 3.0, 2.5],    # y = 4, top = 3 ≠ y (y is second)
      [9.0, -9.0, 0.0, 0.3, 0.1],   # y = 1, y is the least likely
      [0.1, 0.0, 0.5, 0.2, 0.4],    # y = 2, nearly uniform, top = y
  ], np.float32)
  labels = np.array([0, 2, 3, 4, 1, 2])
  return clean, adv, labels


@pytest.mark.parametrize('beta', [5.0, 6.0])
def test_mart_loss_matches_official_code(beta):
  clean, adv, labels = _mart_case()
  got = losses.mart_loss(jnp.asarray(clean), jnp.asarray(adv),
                         jnp.asarray(labels), beta=beta)
  want = _np_mart(clean, adv, labels, beta)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_mart_runner_up_selection():
  # Isolate the BCE part (β = 0, clean = adv is irrelevant then) and check
  # which class ŷ enters -log(1.0001 - p'_ŷ) on both branches.
  clean, adv, labels = _mart_case()
  got = losses.mart_loss(jnp.asarray(clean), jnp.asarray(adv),
                         jnp.asarray(labels), beta=0.0)
  p = _np_softmax(adv)
  y_hat = np.array([1, 0, 4, 3, 0, 4])
  want = (_np_ce(adv, labels) -
          np.log(1.0001 - p[np.arange(6), y_hat] + 1e-12))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Using the top class even when it is y would give different values.
  wrong = (_np_ce(adv, labels) -
           np.log(1.0001 - p.max(axis=1) + 1e-12))
  assert not np.allclose(got, wrong, rtol=1e-3)


def test_mart_loss_gradients_flow_through_clean_logits():
  # Nothing is detached in the official code: compare against a finite
  # difference of the full formula in both arguments.
  clean, adv, labels = _mart_case()
  beta = 6.0
  y = jnp.asarray(labels)
  g_clean, g_adv = jax.grad(
      lambda c, a: jnp.sum(losses.mart_loss(c, a, y, beta=beta)),
      argnums=(0, 1))(jnp.asarray(clean), jnp.asarray(adv))
  want_clean = _np_finite_difference(
      lambda c: _np_mart(c, adv, labels, beta).sum(), clean)
  want_adv = _np_finite_difference(
      lambda a: _np_mart(clean, a, labels, beta).sum(), adv)
  np.testing.assert_allclose(g_clean, want_clean, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(g_adv, want_adv, rtol=1e-3, atol=1e-4)
  assert np.max(np.abs(want_clean)) > 1e-1
