"""APGD against the AutoAttack reference's definitions and attack invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks_test  # the shared small CNN trained without defence
from jard.attacks import apgd as apgd_lib


def test_checkpoint_iterations_for_100_steps():
  schedule = apgd_lib.checkpoints(100)
  assert [i + 1 for i, _ in schedule] == [22, 41, 57, 70, 80, 87, 93, 99]
  assert [k for _, k in schedule] == [22, 19, 16, 13, 10, 7, 6, 6]
  # The paper's p-sequence: checkpoints at 0.22, 0.41, ..., 0.99 of N.
  assert [i + 1 for i, _ in apgd_lib.checkpoints(1000)][:3] == [220, 410, 570]


def test_dlr_losses_match_hand_computation():
  logits = jnp.array([[3.0, 1.0, 0.5, -1.0, 2.0],
                      [0.0, 4.0, 1.0, 2.0, -2.0]])
  labels = jnp.array([0, 3])
  # Row 0: y = 0 is the top logit; max other = 2; sorted 3, 2, 1, 0.5, -1.
  # Row 1: z_y = 2; max other = 4; sorted 4, 2, 1, 0, -2.
  want = [-(3 - 2) / (3 - 1 + 1e-12), -(2 - 4) / (4 - 1 + 1e-12)]
  np.testing.assert_allclose(apgd_lib.dlr_loss(logits, labels), want,
                             rtol=1e-6)
  targets = jnp.array([4, 1])
  want_t = [-(3 - 2) / (3 - 0.5 * (1 + 0.5) + 1e-12),
            -(2 - 4) / (4 - 0.5 * (1 + 0) + 1e-12)]
  np.testing.assert_allclose(
      apgd_lib.targeted_dlr_loss(logits, labels, targets), want_t, rtol=1e-6)
  # Shift and positive scale invariance of DLR.
  np.testing.assert_allclose(apgd_lib.dlr_loss(3 * logits + 7, labels),
                             apgd_lib.dlr_loss(logits, labels), rtol=1e-5)


@pytest.fixture(scope='module', name='natural_model')
def natural_model_fixture():
  return attacks_test._train_natural_model()  # pylint: disable=protected-access


@pytest.mark.parametrize('loss', ['ce', 'dlr', 'dlr_targeted'])
def test_apgd_invariants_on_an_undefended_model(natural_model, loss):
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  eps = 8 / 255
  targets = None
  if loss == 'dlr_targeted':  # the 2nd most likely clean class
    targets = jnp.argsort(f(x), -1)[:, -2]
  run = jax.jit(lambda key: apgd_lib.apgd(f, x, y, key, eps=eps, n_iter=20,
                                          loss=loss, targets=targets))
  keys = jax.random.split(jax.random.key(0), 64)
  x_adv, fooled = run(keys)
  delta = np.abs(np.asarray(x_adv - x)).reshape(64, -1).max(-1)
  assert np.all(delta <= eps + 1e-6)
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # Fooled points are misclassified; the others get their clean input back.
  pred = np.asarray(jnp.argmax(f(x_adv), -1))
  fooled = np.asarray(fooled)
  assert np.all(pred[fooled] != np.asarray(y)[fooled])
  np.testing.assert_array_equal(np.asarray(x_adv)[~fooled],
                                np.asarray(x)[~fooled])
  assert fooled.mean() >= 0.98  # ~0% robust accuracy, undefended, 8/255
  again, _ = run(keys)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(x_adv))


def test_apgd_returns_clean_inputs_when_it_cannot_fool(natural_model):
  f, x, y = natural_model
  x, y = x[:64], y[:64]
  x_adv, fooled = apgd_lib.apgd(f, x, y, jax.random.key(1), eps=0.3 / 255,
                                n_iter=10)
  fooled = np.asarray(fooled)
  assert (~fooled).sum() > 0
  np.testing.assert_array_equal(np.asarray(x_adv)[~fooled],
                                np.asarray(x)[~fooled])


def test_apgd_is_at_least_as_strong_as_pgd(natural_model):
  """At a small ε, APGD-CE fools at least as many points as PGD-20."""
  from jard import attacks, losses  # pylint: disable=g-import-not-at-top
  f, x, y = natural_model
  eps = 2 / 255
  x_pgd = attacks.pgd(lambda z: losses.cross_entropy(f(z), y), x,
                      jax.random.key(3), eps=eps, step_size=eps / 4,
                      steps=20)
  pgd_fooled = np.asarray(jnp.argmax(f(x_pgd), -1) != y)
  _, apgd_fooled = apgd_lib.apgd(f, x, y, jax.random.key(3), eps=eps,
                                 n_iter=20)
  assert np.asarray(apgd_fooled).sum() >= pgd_fooled.sum()


def _reference_apgd_numpy(x, y, w, t, eps, n_iter, rho=0.75):
  """A literal numpy transcription of the reference `attack_single_run` +
  `perturb` (L∞, CE, one restart) for the net `tanh(x @ w1) @ w2`."""
  w1, w2 = w
  def loss_grad(z):
    h = np.tanh(z @ w1)
    logits = h @ w2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y])
    onehot = np.eye(w2.shape[1])[y]
    grad = (((p - onehot) @ w2.T) * (1 - h ** 2)) @ w1.T
    return loss, grad, logits.argmax(1) == y
  n_iter_2 = max(int(0.22 * n_iter), 1)
  n_iter_min = max(int(0.06 * n_iter), 1)
  size_decr = max(int(0.03 * n_iter), 1)
  x_adv = np.clip(x + eps * t / np.abs(t).max(1, keepdims=True), 0, 1)
  x_best, x_best_adv = x_adv.copy(), x_adv.copy()
  loss_steps = np.zeros((n_iter, len(x)))
  loss_indiv, grad, acc = loss_grad(x_adv)
  grad_best = grad.copy()
  loss_best = loss_indiv.copy()
  step_size = 2.0 * eps * np.ones((len(x), 1))
  x_adv_old = x_adv.copy()
  k, counter3 = n_iter_2, 0
  loss_best_last_check = loss_best.copy()
  reduced_last_check = np.ones(len(x))
  for i in range(n_iter):
    grad2 = x_adv - x_adv_old
    x_adv_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    x_adv_1 = np.clip(np.clip(x_adv + step_size * np.sign(grad), x - eps,
                              x + eps), 0, 1)
    x_adv_1 = np.clip(np.clip(x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a),
                              x - eps, x + eps), 0, 1)
    x_adv = x_adv_1
    loss_indiv, grad, pred = loss_grad(x_adv)
    acc = np.minimum(acc, pred)
    x_best_adv[~pred] = x_adv[~pred]
    loss_steps[i] = loss_indiv
    ind = loss_indiv > loss_best
    x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], \
        loss_indiv[ind]
    counter3 += 1
    if counter3 == k:
      t_count = np.zeros(len(x))
      for c in range(k):
        t_count += loss_steps[i - c] > loss_steps[i - c - 1]
      fl_osc = (t_count <= k * rho).astype(float)
      fl_no_impr = (1.0 - reduced_last_check) * (
          loss_best_last_check >= loss_best)
      fl_osc = np.maximum(fl_osc, fl_no_impr)
      reduced_last_check = fl_osc.copy()
      loss_best_last_check = loss_best.copy()
      red = fl_osc > 0
      step_size[red] /= 2.0
      x_adv[red], grad[red] = x_best[red], grad_best[red]
      k = max(k - size_decr, n_iter_min)
      counter3 = 0
  clean_ok = (np.tanh(x @ w1) @ w2).argmax(1) == y
  fooled = (acc == 0) & clean_ok
  out = np.where(fooled[:, None], x_best_adv, x)
  return out, fooled | ~clean_ok, step_size[:, 0], loss_best, x_best, loss_steps


def test_apgd_matches_a_numpy_port_of_the_reference():
  rng = np.random.default_rng(0)
  d, classes, b = 20, 5, 32
  # A wiggly net, so gradient signs change and the step-size rule acts.
  w = (rng.normal(size=(d, 16)) * 4.0, rng.normal(size=(16, classes)))
  net = lambda z, m=np: m.tanh(z @ w[0]) @ w[1]
  x = rng.uniform(0.2, 0.8, size=(b, d))
  y = net(x).argmax(1)  # clean-correct points ...
  y[:3] = (y[:3] + 1) % classes  # ... and three misclassified ones
  key = jax.random.key(5)
  # 20 iterations: 14 checkpoints with windows 4, 3, 2, 1, ... After ~20
  # halvings consecutive iterates differ by rounding only, and then the
  # "loss increased" comparisons are decided by last-bit differences between
  # numpy and XLA (observed from 25 iterations on), not by the algorithm.
  eps, n_iter = 0.03, 20
  jax.config.update('jax_enable_x64', True)  # exact comparison in float64
  try:
    # The same uniform draw as the JAX start (a single key: one array).
    t = np.asarray(jax.random.uniform(key, (b, d), jnp.float64, -1., 1.))
    got_x, got_fooled, state = apgd_lib.apgd(
        lambda z: net(z, jnp), jnp.asarray(x), jnp.asarray(y), key,
        eps=eps, n_iter=n_iter, return_state=True)
    got_x, got_fooled = np.asarray(got_x), np.asarray(got_fooled)
    state = jax.tree.map(np.asarray, state)
  finally:
    jax.config.update('jax_enable_x64', False)
  want_x, want_fooled, step, loss_best, x_best, _ = _reference_apgd_numpy(
      x, y, w, t, eps, n_iter)
  assert 0 < want_fooled.sum() < b  # both outcomes occur
  # The schedule really acted: some step sizes were halved, not all alike.
  assert len(np.unique(step)) > 1 and step.min() < 2 * eps
  np.testing.assert_array_equal(got_fooled, want_fooled)
  np.testing.assert_allclose(got_x, want_x, atol=1e-9)
  np.testing.assert_allclose(state['step'], step, rtol=1e-12)
  np.testing.assert_allclose(state['loss_best'], loss_best, rtol=1e-9)
  np.testing.assert_allclose(state['x_best'], x_best, atol=1e-9)


def _fold(keys, r):
  return jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)


def test_apgd_t_equals_one_run_per_target_on_the_remaining_points(
    natural_model):
  """APGD-T: target j is the j-th largest clean logit (j = 2, 3, ...), run r
  uses keys fold_in(key, r), and each run attacks only unfooled points."""
  f, x, y = natural_model
  x, y = x[:48], y[:48]
  eps, n_iter = 4 / 255, 8  # weak, so several targets are needed
  keys = jax.random.split(jax.random.key(7), 48)
  got_x, got_fooled = jax.jit(lambda k: apgd_lib.apgd_attack(
      f, x, y, k, eps=eps, loss='dlr_targeted', n_iter=n_iter,
      n_target_classes=4))(keys)
  ranking = np.argsort(np.asarray(f(x)), -1)
  want_fooled = np.array(jnp.argmax(f(x), -1) != y)
  want_x = np.asarray(x).copy()
  for r in range(4):
    targets = jnp.asarray(ranking[:, -(r + 2)])
    x_r, fooled_r = apgd_lib.apgd(f, x, y, _fold(keys, r), eps=eps,
                                  n_iter=n_iter, loss='dlr_targeted',
                                  targets=targets)
    new = np.asarray(fooled_r) & ~want_fooled
    want_x[new] = np.asarray(x_r)[new]
    want_fooled |= new
  assert 0 < want_fooled.sum() < 48
  np.testing.assert_array_equal(np.asarray(got_fooled), want_fooled)
  np.testing.assert_array_equal(np.asarray(got_x), want_x)


def test_apgd_restarts_and_active_mask(natural_model):
  f, x, y = natural_model
  x, y = x[:48], y[:48]
  eps, n_iter = 4 / 255, 6
  keys = jax.random.split(jax.random.key(8), 48)
  run = jax.jit(lambda k, active: apgd_lib.apgd_attack(
      f, x, y, k, eps=eps, n_iter=n_iter, n_restarts=3, active=active))
  got_x, got_fooled = run(keys, jnp.ones(48, bool))
  want_fooled = np.array(jnp.argmax(f(x), -1) != y)
  want_x = np.asarray(x).copy()
  for r in range(3):
    x_r, fooled_r = apgd_lib.apgd(f, x, y, _fold(keys, r), eps=eps,
                                  n_iter=n_iter)
    new = np.asarray(fooled_r) & ~want_fooled
    want_x[new] = np.asarray(x_r)[new]
    want_fooled |= new
  assert 0 < want_fooled.sum() < 48
  np.testing.assert_array_equal(np.asarray(got_fooled), want_fooled)
  np.testing.assert_array_equal(np.asarray(got_x), want_x)
  # More restarts never fool fewer points (same keys for the first runs).
  _, one = jax.jit(lambda k: apgd_lib.apgd_attack(
      f, x, y, k, eps=eps, n_iter=n_iter, n_restarts=1))(keys)
  assert np.all(np.asarray(got_fooled) >= np.asarray(one))
  # Inactive points: clean input, not fooled; active ones unchanged.
  active = np.arange(48) % 3 != 0
  masked_x, masked_fooled = run(keys, jnp.asarray(active))
  masked_x, masked_fooled = np.asarray(masked_x), np.asarray(masked_fooled)
  assert not masked_fooled[~active].any()
  np.testing.assert_array_equal(masked_x[~active], np.asarray(x)[~active])
  np.testing.assert_array_equal(masked_fooled[active], want_fooled[active])
  np.testing.assert_array_equal(masked_x[active], want_x[active])


def test_apgd_eot_averages_gradient_samples(natural_model):
  """EoT (version 'rand'): a model with input noise gets `eot_iter` keyed
  forward passes per iteration; with a noiseless model it equals plain APGD."""
  f, x, y = natural_model
  x, y = x[:32], y[:32]
  keys = jax.random.split(jax.random.key(9), 32)
  calls = []

  def noiseless(z, sample_keys):
    calls.append(sample_keys.shape)
    return f(z)

  plain, fooled = apgd_lib.apgd_attack(f, x, y, keys, eps=2 / 255, n_iter=5)
  eot, fooled_eot = apgd_lib.apgd_attack(noiseless, x, y, keys, eps=2 / 255,
                                         n_iter=5, eot_iter=4)
  assert calls and all(s == (32,) for s in calls)
  np.testing.assert_array_equal(np.asarray(fooled), np.asarray(fooled_eot))
  np.testing.assert_allclose(np.asarray(plain), np.asarray(eot), atol=1e-6)

  def noisy(z, sample_keys):
    noise = jax.vmap(lambda k: jax.random.normal(k, z.shape[1:]))(sample_keys)
    return f(z + 0.05 * noise)
  x_adv, fooled_noisy = jax.jit(lambda k: apgd_lib.apgd_attack(
      noisy, x, y, k, eps=8 / 255, n_iter=10, eot_iter=5))(keys)
  delta = np.abs(np.asarray(x_adv - x)).max()
  assert delta <= 8 / 255 + 1e-6 and np.asarray(fooled_noisy).mean() > 0.5
