"""FAB-T (and untargeted FAB): the L∞ Fast Adaptive Boundary attack, as
AutoAttack runs it.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020; the AutoAttack reference (`fab_base.py`,
`fab_pt.py`, `fab_projections.py`) is reproduced step for step
(`attacks_facts.md` §1.4). FAB is a *minimum-norm* attack: it searches for
the closest misclassified point and the result counts only if ‖δ‖∞ ≤ ε.

One run against target t (`fab_targeted`), x₀ the clean input, x₁ = x₀ (no
random start on the first restart), best norm r = 1e10; n_iter times:

* f = z_t − z_y and g = ∇ₓ f at x₁ (one backward: the gradient of the sum
  over the batch). The boundary is linearised as the hyperplane
  `{z : g·z = b}`, `b = g·x₁ − f`.
* d₁, d₂ = L∞ projections of x₁ and x₀ on that hyperplane ∩ [0, 1]^D
  (`projection_linf`); a_i = max(‖d_i‖∞, 1e-8).
* α = clip(a₁ / (a₁ + a₂), 0, α_max) (biased towards x₀),
  x₁ ← clip((x₁ + η d₁)(1 − α) + (x₀ + η d₂) α, 0, 1) (η: overshoot).
* If argmax z(x₁) ≠ y: keep x₁ when ‖x₁ − x₀‖∞ < r (then r ← that norm) and
  step back, x₁ ← x₀ + β (x₁ − x₀).

The run succeeds where r < 1e10, the kept point is misclassified (checked
again, as the reference's `perturb`) and r ≤ ε. `fab_t` is AutoAttack's loop
over targets: for rank j = 2 … n_target_classes + 1 the target is the class
with the j-th largest *clean* logit, and only points not yet fooled count
(each run starts from the clean image).

Defaults α_max = 0.1, η = 1.05, β = 0.9, n_iter = 100, 9 targets, 1 restart.
Restarts > 0 start from x₀ + (ε/2) u/‖u‖∞ (u uniform in [−1, 1]^D) clipped to
[0, 1]: the reference writes the radius as min(r, ε)/2, but r is reset to
1e10 at the start of every run, so it is always ε/2.

Deviations from the reference: the projection runs on every row with masks
(the reference indexes subsets), a zero denominator in it gives λ = 0 where
the reference would divide by zero, ties in sorts follow `jnp.argsort`
(stable), and the random start draws per-example keys.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

LogitsFn = Callable[[jax.Array], jax.Array]

_NO_ADV = 1e10  # the reference's initial best norm: "nothing found yet"


def _row_sum(v: jax.Array) -> jax.Array:
  """Σ over axis 1 of `[N, D]`, in an order that does not depend on N.

  XLA:CPU's row reductions of short rows are not bitwise invariant to the
  number of rows (seen at D = 192), which would make an example's result
  depend on its batch; the scan behind `cumsum` is.
  """
  return jnp.cumsum(v, axis=1)[:, -1]


def projection_linf(points: jax.Array, w: jax.Array,
                    b: jax.Array) -> jax.Array:
  """Minimal L∞ step from each point to `{z : w·z = b} ∩ [0, 1]^D`.

  The reference's `projection_linf`: the hyperplane is `w·z = b` (not
  `w·z + b = 0`) and the *perturbation* d is returned, not the point. After
  flipping the signs so that `w·t ≥ b`, the best step of L∞ radius λ moves
  each coordinate by `−sign(w_i) min(λ, p_i)`, p_i its room to the box edge
  (t_i if w_i > 0, 1 − t_i if w_i < 0), so `w·d = −Σ |w_i| min(λ, p_i)` is
  piecewise linear in λ. Sorting p (descending) makes its breakpoints
  cumulative sums; a binary search of ⌈log₂ D⌉ steps finds the segment where
  it equals `b − w·t`, and λ follows in closed form:

  * the box binds nowhere (λ ≤ min p): d = −sign(w) λ;
  * it binds on some coordinates: d_i = −sign(w_i) min(λ, p_i);
  * infeasible (even the box corner cannot reach the plane): d is the step
    to that corner, d_i = −sign(w_i) p_i.

  Coordinates with w_i = 0 never move (so w = 0 gives d = 0).

  Args:
    points: `[N, D]` points t.
    w: `[N, D]` normals.
    b: `[N]` offsets.

  Returns:
    `[N, D]` perturbations d, with `w·(t + d) = b` where feasible.
  """
  t = points
  dim = t.shape[1]
  wt = _row_sum(w * t)
  side = jnp.where(wt - b >= 0, 1.0, -1.0).astype(t.dtype)
  w, b, wt = w * side[:, None], b * side, wt * side  # sign flips are exact
  a = (w < 0).astype(t.dtype)
  moving = (w != 0).astype(t.dtype)
  corner = (a - t) * moving  # the farthest step towards the plane
  room = a - t * (2 * a - 1)  # p: distance to the box edge on that side
  ascending = jnp.argsort(room, axis=1)
  descending = ascending[:, ::-1]
  b = b - wt  # ≤ 0: the change of w·z still needed
  b0 = _row_sum(w * corner)  # the largest change the box allows
  take = lambda v, i: jnp.take_along_axis(v, i, axis=1)
  w_sorted = take(w, descending)
  s = jnp.cumsum(jnp.abs(w_sorted), axis=1)
  sb = jnp.cumsum(-w_sorted * take(corner, descending), axis=1) + b0[:, None]
  room_sorted = take(room, descending)
  b2 = sb[:, -1] - s[:, -1] * take(room, ascending[:, :1])[:, 0]
  free = b - b2 > 0  # λ below every p: no coordinate hits the box
  binds = (b - b0 > 0) & (b - b2 <= 0)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    at = lambda v: take(v, mid[:, None])[:, 0]
    value = at(sb) - at(s) * at(room_sorted)
    below = b - value > 0
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  n = t.shape[0]
  lo, _ = jax.lax.fori_loop(
      0, math.ceil(math.log2(dim)), bisect,
      (jnp.zeros((n,), jnp.int32), jnp.full((n,), dim - 1, jnp.int32)))

  def step(sb_k, s_k):  # λ = max((b − sb_k) / (−s_k), 0); s_k = 0 -> 0
    safe = jnp.where(s_k > 0, s_k, 1.0)
    return jnp.where(s_k > 0, jnp.maximum((b - sb_k) / (-safe), 0.0), 0.0)

  lmbd_free = step(sb[:, -1], s[:, -1])[:, None]
  lmbd = step(take(sb, lo[:, None])[:, 0], take(s, lo[:, None])[:, 0])
  lmbd = lmbd[:, None]
  d_free = (2 * a - 1) * lmbd_free
  d_binds = (jnp.minimum(lmbd, corner) * a
             + jnp.maximum(-lmbd, corner) * (1 - a))
  d = jnp.where(free[:, None], d_free,
                jnp.where(binds[:, None], d_binds, corner))
  return d * moving


def _linf(v: jax.Array) -> jax.Array:
  return jnp.max(jnp.abs(v), axis=1)


def _random_start(x0, keys, eps):
  """x₀ + (ε/2) u/‖u‖∞, u ~ U(−1, 1)^D per example, clipped: `[B, D]`."""
  u = jax.vmap(lambda k: jax.random.uniform(k, x0.shape[1:], x0.dtype, -1.,
                                            1.))(keys)
  radius = jnp.broadcast_to(jnp.asarray(eps, x0.dtype), x0.shape[:1])
  return jnp.clip(x0 + radius[:, None] * u / _linf(u)[:, None] * 0.5, 0., 1.)


def _run(logits_fn, x0, shape, labels, targets, start, *, n_iter,
         alpha_max, eta, beta):
  """FAB iterations on flat `[B, D]` inputs: `(best, best_norm, x1)`."""
  batch = x0.shape[0]
  rows = jnp.arange(batch)

  def margin(z):
    logits = logits_fn(z.reshape(shape))
    diff = logits[rows, targets] - logits[rows, labels]
    return jnp.sum(diff), diff

  def closest_boundary(z):
    """Untargeted: the class k ≠ y of smallest |f_k| / ‖∇f_k‖₁, from the
    full Jacobian (one backward per class), f_k = z_k − z_y."""
    logits, vjp = jax.vjp(lambda v: logits_fn(v.reshape(shape)), z)
    n_classes = logits.shape[-1]
    jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(
        jnp.eye(n_classes, dtype=logits.dtype))  # [K, B, D]
    jac = jnp.swapaxes(jac, 0, 1)  # [B, K, D]
    df = logits - logits[rows, labels][:, None]
    dg = jac - jac[rows, labels][:, None]
    df = df.at[rows, labels].set(_NO_ADV)
    dist = jnp.abs(df) / (1e-12 + jnp.cumsum(jnp.abs(dg), axis=2)[..., -1])
    k = jnp.argmin(dist, axis=1)
    return dg[rows, k], df[rows, k]

  def body(_, state):
    x1, best, best_norm = state
    if targets is None:
      grad, df = closest_boundary(x1)
    else:
      grad, df = jax.grad(margin, has_aux=True)(x1)
    b = -df + _row_sum(grad * x1)
    d = projection_linf(jnp.concatenate([x1, x0]),
                        jnp.concatenate([grad, grad]), jnp.concatenate([b, b]))
    d1, d2 = d[:batch], d[batch:]
    a0 = jnp.maximum(_linf(d), 1e-8)
    a1, a2 = a0[:batch, None], a0[batch:, None]
    alpha = jnp.minimum(jnp.maximum(a1 / (a1 + a2), 0.0), alpha_max)
    x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + d2 * eta) * alpha,
                  0.0, 1.0)
    adv = jnp.argmax(logits_fn(x1.reshape(shape)), -1) != labels
    norm = _linf(x1 - x0)
    better = adv & (norm < best_norm)
    best = jnp.where(better[:, None], x1, best)
    best_norm = jnp.where(better, norm, best_norm)
    x1 = jnp.where(adv[:, None], x0 + (x1 - x0) * beta, x1)
    return x1, best, best_norm

  init = (start, x0, jnp.full((batch,), _NO_ADV, x0.dtype))
  x1, best, best_norm = jax.lax.fori_loop(0, n_iter, body, init)
  return best, best_norm, x1


def _check(logits_fn, x0, shape, labels, best, best_norm, eps):
  """The reference's `perturb` test of one run: `(candidate, success)`."""
  found = best_norm < _NO_ADV
  candidate = jnp.where(found[:, None], best, x0)
  wrong = jnp.argmax(logits_fn(candidate.reshape(shape)), -1) != labels
  return candidate, wrong & (_linf(candidate - x0) <= eps)


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                 targets: jax.Array, *, eps, n_iter: int = 100,
                 alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, key=None, return_state: bool = False):
  """One FAB-T run with one target class per example (L∞).

  Args:
    logits_fn: `x [B, ...] -> logits [B, K]` (eval mode).
    x: clean inputs in [0, 1], e.g. `[B, H, W, C]` (flattened internally).
    labels: `[B]` true labels.
    targets: `[B]` target classes t.
    eps: L∞ radius (scalar or `[B]`); only decides success (and the
      random-start radius), FAB itself minimises the norm.
    n_iter: iterations.
    alpha_max: α_max, the largest weight on the projection of x₀.
    eta: η, the overshoot.
    beta: β, the backward step after an adversarial iterate.
    key: `None` (default, AutoAttack's first restart): start at x; else
      `[B]` keys for a random start of radius ε/2 (the reference's later
      restarts).
    return_state: also return `{'best', 'best_norm', 'x_iter'}`: the
      smallest adversarial iterate (x where none), its norm (1e10 where
      none, whatever ε) and the last iterate, each flat `[B, D]` / `[B]`.

  Returns:
    `(x_adv, fooled)`: `x_adv` is the minimum-norm adversarial point where
    `fooled [B]` is True and x elsewhere; points misclassified when clean
    count as fooled and keep x.
  """
  x = jax.lax.stop_gradient(x)
  x0 = x.reshape(x.shape[0], -1)
  start = x0 if key is None else _random_start(x0, key, eps)
  best, best_norm, x1 = _run(logits_fn, x0, x.shape, labels, targets, start,
                             n_iter=n_iter, alpha_max=alpha_max, eta=eta,
                             beta=beta)
  candidate, success = _check(logits_fn, x0, x.shape, labels, best,
                              best_norm, eps)
  clean_ok = jnp.argmax(logits_fn(x), -1) == labels
  success = success & clean_ok
  x_adv = jnp.where(success[:, None], candidate, x0).reshape(x.shape)
  out = jax.lax.stop_gradient(x_adv), success | ~clean_ok
  if return_state:
    return out + (dict(best=best, best_norm=best_norm, x_iter=x1),)
  return out


def fab_t(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
          keys: jax.Array, *, eps, n_iter: int = 100,
          n_target_classes: int = 9, alpha_max: float = 0.1,
          eta: float = 1.05, beta: float = 0.9, n_restarts: int = 1,
          active=None):
  """FAB-T as AutoAttack's `standard` version runs it (L∞).

  For target rank j = 2 … n_target_classes + 1 (one `lax.fori_loop`, each
  target skipped by `lax.cond` once no active point is left) and restart
  r < n_restarts, one `fab_targeted` run against the class with the j-th
  largest clean logit, from x (r = 0) or a random start (r > 0, keys folded
  with the run index). A point fooled by one run keeps that result; later
  runs do not touch it.

  Args:
    logits_fn: `x [B, ...] -> logits [B, K]` (eval mode), K > n_target_classes.
    x: clean inputs in [0, 1].
    labels: `[B]` true labels.
    keys: `[B]` per-example PRNG keys (used by restarts > 0 only).
    eps: L∞ radius (scalar or `[B]`).
    n_iter: iterations per run.
    n_target_classes: number of targets (AutoAttack: 9).
    alpha_max: α_max.
    eta: η, the overshoot.
    beta: β, the backward step.
    n_restarts: runs per target (AutoAttack's FAB-T: 1).
    active: optional `[B]` bool; inactive points are never fooled and get x.

  Returns:
    `(x_adv, fooled)`: the minimum-norm adversarial point within ε of the
    first successful run where `fooled [B]`, x elsewhere. Points
    misclassified when clean count as fooled (when active) and keep x.
  """
  x = jax.lax.stop_gradient(x)
  batch = x.shape[0]
  logits = logits_fn(x)
  n_classes = logits.shape[-1]
  if not 1 <= n_target_classes < n_classes:
    raise ValueError(f'n_target_classes must be in [1, {n_classes - 1}] for '
                     f'{n_classes} classes, got {n_target_classes}.')
  if n_restarts < 1:
    raise ValueError(f'n_restarts must be at least 1, got {n_restarts}.')
  ranked = jnp.argsort(logits, axis=-1)  # ascending: rank j at K − j

  def targets_of(i):  # run i: target rank 2 + i // n_restarts
    return jnp.take_along_axis(
        ranked, jnp.full((batch, 1), n_classes - (2 + i // n_restarts)),
        axis=1)[:, 0]

  return _runs(logits_fn, x, labels, keys, logits, eps=eps,
               n_runs=n_target_classes * n_restarts, n_restarts=n_restarts,
               targets_of=targets_of, active=active, n_iter=n_iter,
               alpha_max=alpha_max, eta=eta, beta=beta)


def _runs(logits_fn, x, labels, keys, clean_logits, *, eps, n_runs,
          n_restarts, targets_of, active, **fab_kw):
  """Runs `fab` n_runs times on the points no earlier run fooled.

  Run i attacks `targets_of(i)` (None: untargeted) from x when
  `i % n_restarts == 0`, else from a random start (keys folded with i); a
  run is skipped by `lax.cond` once no active point is left. Returns
  `(x_adv, fooled)` as `fab_t`.
  """
  batch = x.shape[0]
  x0 = x.reshape(batch, -1)
  active = (jnp.ones((batch,), bool) if active is None
            else jnp.asarray(active, bool))
  clean_ok = jnp.argmax(clean_logits, -1) == labels

  def one_run(i, carry):
    todo = active & clean_ok & ~carry[1]

    def attack(carry):
      x_adv, fooled = carry
      start = x0
      if n_restarts > 1:
        run_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
        start = jnp.where(i % n_restarts > 0,
                          _random_start(x0, run_keys, eps), x0)
      best, best_norm, _ = _run(logits_fn, x0, x.shape, labels,
                                targets_of(i), start, **fab_kw)
      candidate, success = _check(logits_fn, x0, x.shape, labels, best,
                                  best_norm, eps)
      success = success & todo
      return (jnp.where(success[:, None], candidate, x_adv),
              fooled | success)

    return jax.lax.cond(jnp.any(todo), attack, lambda c: c, carry)

  x_adv, fooled = jax.lax.fori_loop(0, n_runs, one_run,
                                    (x0, jnp.zeros((batch,), bool)))
  fooled = active & (fooled | ~clean_ok)
  x_adv = jnp.where((active & clean_ok & fooled)[:, None], x_adv, x0)
  return (jax.lax.stop_gradient(x_adv.reshape(x.shape)),
          jax.lax.stop_gradient(fooled))


def fab_untargeted(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
                   keys: jax.Array, *, eps, n_iter: int = 100,
                   n_restarts: int = 5, alpha_max: float = 0.1,
                   eta: float = 1.05, beta: float = 0.9, active=None):
  """Untargeted FAB (L∞), as AutoAttack's `plus` version runs it.

  Each iteration linearises the boundary to the class k ≠ y that looks
  closest, argmin_k |z_k − z_y| / ‖∇(z_k − z_y)‖₁, which needs the full
  Jacobian (K backward passes; why `standard` uses FAB-T). Run 0 starts at
  x, runs r > 0 at a random point of radius ε/2 (keys folded with r); each
  run attacks only points no earlier run fooled. Otherwise as `fab_t`
  (same arguments and returns).
  """
  if n_restarts < 1:
    raise ValueError(f'n_restarts must be at least 1, got {n_restarts}.')
  x = jax.lax.stop_gradient(x)
  return _runs(logits_fn, x, labels, keys, logits_fn(x), eps=eps,
               n_runs=n_restarts, n_restarts=n_restarts,
               targets_of=lambda i: None, active=active, n_iter=n_iter,
               alpha_max=alpha_max, eta=eta, beta=beta)
