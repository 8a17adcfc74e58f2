"""APGD (Croce & Hein, ICML 2020), as the AutoAttack reference implements it.

Auto-PGD is PGD with momentum and a step size that halves, per example, at
fixed checkpoints when progress stalls (`attacks_facts.md` §1.2):

* η₀ = 2ε; momentum 0.75 on the new step (none on the first iteration):
  `z = Π(x_k + η sign(g_k))`, `x_{k+1} = Π(x_k + 0.75 (z − x_k) + 0.25 (x_k −
  x_{k−1}))`, Π = projection on the ε-ball and [0, 1].
* Checkpoints: the first window is `⌊0.22 N⌋` iterations, each next one
  `⌊0.03 N⌋` shorter, at least `⌊0.06 N⌋` (N = 100: iterations 22, 41, 57,
  70, 80, 87, 93, 99, 1-based). At a checkpoint an example halves η and
  restarts from its best point if the loss increased in at most ρ = 0.75 of
  the window's steps, or if η was not halved at the previous checkpoint and
  the best loss did not improve since (disabled at the first checkpoint).
* The result is, per example, the last misclassified iterate, or the *clean*
  input when the attack never fooled it.

One reference quirk is kept for a faithful port: the oscillation count of the
first window compares the first post-step loss with a zero-initialised
history slot (the reference indexes position −1 of its buffer).

Everything runs under `jit` with per-example state: the checkpoint schedule
is static, the per-example decisions are masks.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array], jax.Array]


def checkpoints(n_iter: int) -> list[tuple[int, int]]:
  """`(iteration, window)` pairs at which APGD checks its step size.

  Iterations are 0-based loop indices (the reference's `i`); add 1 for the
  1-based iteration count. For `n_iter = 100`: (21, 22), (40, 19), (56, 16),
  (69, 13), (79, 10), (86, 7), (92, 6), (98, 6).
  """
  window = max(int(0.22 * n_iter), 1)
  minimum = max(int(0.06 * n_iter), 1)
  decrement = max(int(0.03 * n_iter), 1)
  out, counter = [], 0
  for i in range(n_iter):
    counter += 1
    if counter == window:
      out.append((i, window))
      window = max(window - decrement, minimum)
      counter = 0
  return out


def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Untargeted DLR, to maximise: `−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`.

  `z` sorted descending (π1 the largest logit). Shapes `[B, K]`, `[B]` ->
  `[B]`. Croce & Hein, ICML 2020, Eq. 6.
  """
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  z_y = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  # The largest logit other than y: the top one unless y is on top.
  top_is_y = jnp.argmax(logits, -1) == labels
  other = jnp.where(top_is_y, ordered[:, 1], ordered[:, 0])
  return -(z_y - other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr_loss(logits: jax.Array, labels: jax.Array,
                      targets: jax.Array) -> jax.Array:
  """Targeted DLR: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)`.

  Needs K ≥ 4. Shapes `[B, K]`, `[B]`, `[B]` -> `[B]`.
  """
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  z_y = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  z_t = jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
  return -(z_y - z_t) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3])
                         + 1e-12)


def _linf_start(x, key, eps):
  """x + ε t/‖t‖∞ with t ~ U(−1, 1) per example, clipped to [0, 1]."""
  if key.shape:
    t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype, -1.,
                                              1.))(key)
  else:
    t = jax.random.uniform(key, x.shape, x.dtype, -1., 1.)
  norm = jnp.max(jnp.abs(t.reshape(t.shape[0], -1)), -1)
  t = t / norm.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x + eps * t, 0.0, 1.0)


def _fold(key: jax.Array, data) -> jax.Array:
  """`fold_in` for one key or a `[B]` array of per-example keys."""
  if key.shape:
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)
  return jax.random.fold_in(key, data)


def apgd(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
         key: jax.Array, *, eps: float, n_iter: int = 100,
         loss: str = 'ce', targets=None, rho: float = 0.75,
         eot_iter: int = 1, return_state: bool = False):
  """One APGD run (L∞) from a random start.

  Args:
    logits_fn: `x [B, ...] -> logits [B, K]` (eval mode).
    x: clean inputs in [0, 1].
    labels: `[B]` true labels.
    key: a PRNG key or `[B]` per-example keys (random start).
    eps: L∞ radius.
    n_iter: iterations N.
    loss: `'ce'`, `'dlr'` or `'dlr_targeted'` (needs `targets`).
    targets: `[B]` target classes for the targeted loss.
    rho: the oscillation threshold ρ.
    eot_iter: gradient samples per iteration (Expectation over
      Transformation, AutoAttack's `rand` version uses 20). With
      `eot_iter > 1`, `logits_fn(x, keys)` takes `[B]` per-example keys for
      its randomness; the gradient is the mean over the samples, the loss and
      prediction those of the last sample (as the reference).

    return_state: also return the final per-example state (`step` sizes,
      `loss_best`, `x_best`), for tests and diagnostics.

  Returns:
    `(x_adv, fooled)`: `x_adv` is the last misclassified iterate where
    `fooled [B]` is True, and the clean input elsewhere (plus the state
    dict with `return_state`).
  """
  from jard.losses import cross_entropy  # pylint: disable=g-import-not-at-top
  if loss == 'ce':
    loss_fn = lambda z: cross_entropy(z, labels)
  elif loss == 'dlr':
    loss_fn = lambda z: dlr_loss(z, labels)
  elif loss == 'dlr_targeted':
    if targets is None:
      raise ValueError("loss='dlr_targeted' needs `targets`.")
    loss_fn = lambda z: targeted_dlr_loss(z, labels, targets)
  else:
    raise ValueError(f"APGD loss must be 'ce', 'dlr' or 'dlr_targeted', got "
                     f'{loss!r}.')
  x = jax.lax.stop_gradient(x)
  b = x.shape[0]
  expand = lambda v: v.reshape((b,) + (1,) * (x.ndim - 1))

  eot_keys = _fold(key if key.shape else jnp.broadcast_to(key, (b,)),
                   0x5EED)

  def evaluate(z, t):
    def total(z, sample_keys):
      logits = (logits_fn(z) if eot_iter == 1
                else logits_fn(z, sample_keys))
      per_example = loss_fn(logits)
      return jnp.sum(per_example), (per_example, logits)
    grad_fn = jax.value_and_grad(total, has_aux=True)
    if eot_iter == 1:
      (_, (per_example, logits)), grad = grad_fn(z, None)
    else:
      def sample(e, carry):
        (_, aux), g = grad_fn(z, _fold(eot_keys, t * eot_iter + e))
        return aux, carry[1] + g / eot_iter
      first = jax.eval_shape(lambda: grad_fn(z, eot_keys)[0][1])
      init = (jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), first),
              jnp.zeros_like(z))
      (per_example, logits), grad = jax.lax.fori_loop(0, eot_iter, sample,
                                                      init)
    return per_example, jnp.argmax(logits, -1) == labels, grad

  def project(z):
    return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)

  schedule = checkpoints(n_iter)
  is_check = np.zeros(n_iter, bool)
  window = np.ones(n_iter, np.int32)
  for i, k in schedule:
    is_check[i], window[i] = True, k
  is_check, window = jnp.asarray(is_check), jnp.asarray(window)
  rows = jnp.arange(n_iter)

  x_adv = _linf_start(x, key, eps)
  loss0, correct, grad = evaluate(x_adv, 0)
  state = dict(
      x_adv=x_adv, x_old=x_adv, grad=grad, correct=correct,
      x_best_adv=x_adv, x_best=x_adv, grad_best=grad, loss_best=loss0,
      loss_steps=jnp.zeros((n_iter, b), x.dtype),
      step=jnp.full((b,), 2.0 * eps, x.dtype),
      reduced_last=jnp.ones((b,), bool), loss_best_last=loss0)

  def body(i, s):
    momentum = jnp.where(i > 0, 0.75, 1.0)
    step = expand(s['step'])
    z = project(s['x_adv'] + step * jnp.sign(s['grad']))
    x_new = project(s['x_adv'] + momentum * (z - s['x_adv'])
                    + (1 - momentum) * (s['x_adv'] - s['x_old']))
    losses, pred_ok, grad = evaluate(x_new, i + 1)
    correct = s['correct'] & pred_ok
    x_best_adv = jnp.where(expand(~pred_ok), x_new, s['x_best_adv'])
    loss_steps = s['loss_steps'].at[i].set(losses)
    improved = losses > s['loss_best']
    x_best = jnp.where(expand(improved), x_new, s['x_best'])
    grad_best = jnp.where(expand(improved), grad, s['grad_best'])
    loss_best = jnp.where(improved, losses, s['loss_best'])
    # Checkpoint: count loss increases over the last `window` iterations;
    # row r is compared with row r − 1, and row 0 with the last row (the
    # reference's index −1), as in `check_oscillation`.
    k = window[i]
    increased = loss_steps > jnp.roll(loss_steps, 1, axis=0)
    in_window = (rows <= i) & (rows > i - k)
    count = jnp.sum(increased & in_window[:, None], axis=0)
    oscillating = count <= k * rho
    no_progress = (~s['reduced_last']) & (s['loss_best_last'] >= loss_best)
    reduce = is_check[i] & (oscillating | no_progress)
    step_new = jnp.where(reduce, s['step'] / 2.0, s['step'])
    x_next = jnp.where(expand(reduce), x_best, x_new)
    grad_next = jnp.where(expand(reduce), grad_best, grad)
    return dict(
        x_adv=x_next, x_old=s['x_adv'], grad=grad_next, correct=correct,
        x_best_adv=x_best_adv, x_best=x_best, grad_best=grad_best,
        loss_best=loss_best, loss_steps=loss_steps, step=step_new,
        reduced_last=jnp.where(is_check[i], reduce, s['reduced_last']),
        loss_best_last=jnp.where(is_check[i], loss_best,
                                 s['loss_best_last']))

  state = jax.lax.fori_loop(0, n_iter, body, state)
  # As the reference's `perturb`: a point misclassified when clean counts as
  # fooled and keeps its clean input.
  clean_logits = logits_fn(x) if eot_iter == 1 else logits_fn(x, eot_keys)
  clean_ok = jnp.argmax(clean_logits, -1) == labels
  fooled = (~state['correct'] & clean_ok)
  x_adv = jnp.where(expand(fooled), state['x_best_adv'], x)
  x_adv, fooled = jax.lax.stop_gradient(x_adv), fooled | ~clean_ok
  if return_state:
    return x_adv, fooled, {k: state[k] for k in ('step', 'loss_best',
                                                  'x_best', 'loss_steps')}
  return x_adv, fooled


def apgd_attack(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                keys: jax.Array, *, eps: float, loss: str = 'ce',
                n_iter: int = 100, n_restarts: int = 1,
                n_target_classes: int = 9, eot_iter: int = 1,
                rho: float = 0.75, active=None):
  """APGD with restarts, or APGD-T over targets, as the reference `perturb`.

  Untargeted (`loss` 'ce' or 'dlr'): `n_restarts` runs, each from a fresh
  random start. Targeted (`loss='dlr_targeted'`, AutoAttack's APGD-T): for
  j = 2, …, n_target_classes + 1 the target is the class with the j-th
  largest *clean* logit, and each target gets `n_restarts` runs. Every run
  attacks only the points no earlier run fooled (a mask; a run is skipped
  with `lax.cond` when none is left), and a point keeps the result of the
  run that first fooled it. Run r of example i starts from key
  `fold_in(keys[i], r)`, so an example's result does not depend on the rest
  of its batch.

  Args:
    logits_fn: `x [B, ...] -> logits [B, K]` in eval mode (with
      `eot_iter > 1`: `(x, keys [B]) -> logits`).
    x: `[B, ...]` clean inputs in [0, 1].
    labels: `[B]`.
    keys: `[B]` per-example PRNG keys.
    eps: L∞ radius.
    loss: 'ce', 'dlr' or 'dlr_targeted'.
    n_iter, rho, eot_iter: as `apgd`.
    n_restarts: runs per target (untargeted: runs).
    n_target_classes: targets of APGD-T, at most K − 1 (capped).
    active: optional `[B]` bool; inactive examples are not attacked.

  Returns:
    `(x_adv [B, ...], fooled [B])`: `fooled` = active and (misclassified on
    the clean input, or fooled by some run); `x_adv` is that run's
    misclassified point, and the clean input where not fooled.
  """
  b = x.shape[0]
  active = jnp.ones((b,), bool) if active is None else active
  expand = lambda v: v.reshape((b,) + (1,) * (x.ndim - 1))
  clean_logits = (logits_fn(x) if eot_iter == 1
                  else logits_fn(x, _fold(keys, 0x5EED)))
  fooled0 = active & (jnp.argmax(clean_logits, -1) != labels)
  targeted = loss == 'dlr_targeted'
  num_classes = clean_logits.shape[-1]
  if targeted:
    if num_classes < 4:
      raise ValueError(f'APGD-T (targeted DLR) needs at least 4 classes, '
                       f'the model has {num_classes}.')
    n_target_classes = min(n_target_classes, num_classes - 1)
    ranking = jnp.argsort(clean_logits, axis=-1)  # ascending
  n_runs = n_restarts * (n_target_classes if targeted else 1)

  def run(r, carry):
    x_best, fooled = carry
    todo = active & ~fooled

    def attack(_):
      targets = None
      if targeted:  # the (r // n_restarts + 2)-th largest clean logit
        targets = ranking[:, num_classes - (r // n_restarts + 2)]
      x_r, fooled_r = apgd(logits_fn, x, labels, _fold(keys, r), eps=eps,
                           n_iter=n_iter, loss=loss, targets=targets,
                           rho=rho, eot_iter=eot_iter)
      new = todo & fooled_r
      return jnp.where(expand(new), x_r, x_best), fooled | new

    return jax.lax.cond(jnp.any(todo), attack, lambda _: carry, None)

  return jax.lax.fori_loop(0, n_runs, run, (x, fooled0))
