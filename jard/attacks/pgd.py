"""First-order white-box attacks: PGD (L∞ / L2), FGSM and CW∞.

All attacks are pure functions of arrays and a loss callable:

    x_adv = pgd(loss_fn, x, key, eps=8/255, step_size=2/255, steps=10)

`loss_fn(x_adv) -> [B]` returns the per-example loss to *maximise*. Attacks
take the gradient of its sum (so each example's step depends only on its own
loss), iterate with `lax.fori_loop`, project onto the ε-ball and the data
bounds after every step, and return `stop_gradient(x_adv)`.

`eps` and `step_size` may be scalars or per-example `[B]` arrays (the radio
threat model gives every example its own budget). `key` may be one PRNG key or
a `[B]` array of per-example keys; with per-example keys an example's random
start does not depend on how the batch is split over devices.

Random starts (METHODS.md notation):
  * `'U'`: x + U(-ε, ε) (L∞) or a uniform point of the L2 ball, clipped to
    the bounds (Madry et al.);
  * `'N'`: x + 0.001·N(0, I), not clipped before the first step (TRADES);
  * `'none'`: x.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jard.losses import classification

LossFn = Callable[[jax.Array], jax.Array]
NORMS = ('linf', 'l2')
INITS = ('U', 'N', 'none')
Bounds = Optional[tuple[float, float]]


def _per_example(value, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or `[B]` value against `x` `[B, ...]`."""
  value = jnp.asarray(value, x.dtype)
  if value.ndim == 0:
    return value
  return value.reshape(value.shape + (1,) * (x.ndim - 1))


def _normal(key: jax.Array, x: jax.Array) -> jax.Array:
  if key.shape:  # one key per example
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(key)
  return jax.random.normal(key, x.shape, x.dtype)


def _uniform(key: jax.Array, x: jax.Array) -> jax.Array:
  """U(-1, 1) noise shaped like x."""
  if key.shape:
    return jax.vmap(lambda k: jax.random.uniform(
        k, x.shape[1:], x.dtype, -1.0, 1.0))(key)
  return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)


def _l2_norm(v: jax.Array) -> jax.Array:
  """Per-example L2 norm, shaped `[B, 1, ..., 1]`."""
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))


def _clip(x: jax.Array, bounds: Bounds) -> jax.Array:
  return x if bounds is None else jnp.clip(x, bounds[0], bounds[1])


def project(x_adv: jax.Array, x: jax.Array, eps: jax.Array, norm: str,
            bounds: Bounds) -> jax.Array:
  """Projects onto {‖x_adv − x‖ ≤ ε} and then onto the data bounds."""
  delta = x_adv - x
  if norm == 'linf':
    delta = jnp.clip(delta, -eps, eps)
  else:
    norm_value = _l2_norm(delta)
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(norm_value, 1e-12))
  return _clip(x + delta, bounds)


def random_start(x: jax.Array, key: jax.Array, *, eps, init: str = 'U',
                 norm: str = 'linf', bounds: Bounds = (0.0, 1.0)) -> jax.Array:
  """The starting point of PGD for `init` in `INITS` (see module docstring)."""
  eps = _per_example(eps, x)
  if init == 'none':
    return x
  if init == 'N':
    return x + 0.001 * _normal(key, x)
  if norm == 'linf':
    return _clip(x + eps * _uniform(key, x), bounds)
  # Uniform in the L2 ball: a random direction times ε·u^(1/d).
  if key.shape:
    dir_key, radius_key = jax.vmap(jax.random.split, out_axes=1)(key)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype))(radius_key)
  else:
    dir_key, radius_key = jax.random.split(key)
    u = jax.random.uniform(radius_key, x.shape[:1], x.dtype)
  direction = _normal(dir_key, x)
  direction = direction / jnp.maximum(_l2_norm(direction), 1e-12)
  radius = _per_example(u ** (1.0 / x[0].size), x)
  return _clip(x + eps * radius * direction, bounds)


def _validate(norm: str, init: str, steps: int) -> None:
  if norm not in NORMS:
    raise ValueError(f'attack norm must be one of {NORMS}, got {norm!r}.')
  if init not in INITS:
    raise ValueError(f'attack init must be one of {INITS}, got {init!r}.')
  if not isinstance(steps, int) or steps < 0:
    raise ValueError(f'attack steps must be a non-negative int, got {steps!r}.')


def pgd(loss_fn: LossFn, x: jax.Array, key: jax.Array, *, eps,
        step_size, steps: int, norm: str = 'linf', init: str = 'U',
        bounds: Bounds = (0.0, 1.0)) -> jax.Array:
  """Projected gradient ascent on `loss_fn` within an ε-ball.

  L∞ step: `x' ← Π(x' + α·sign(∇ Σ_i L_i(x')))`;
  L2 step: `x' ← Π(x' + α·g/‖g‖₂)` per example. Π projects onto the ε-ball
  around `x` and then onto `bounds`.

  Args:
    loss_fn: `x_adv [B, ...] -> [B]` per-example loss to maximise.
    x: `[B, ...]` clean inputs.
    key: a PRNG key, or `[B]` per-example keys (used by the random start).
    eps: radius ε, scalar or `[B]`.
    step_size: α, scalar or `[B]`.
    steps: number of iterations (static).
    norm: `'linf'` or `'l2'`.
    init: `'U'`, `'N'` or `'none'`.
    bounds: `(low, high)` data range, or None for unbounded data.

  Returns:
    `[B, ...]` adversarial inputs (gradient stopped).

  References: Madry et al., "Towards Deep Learning Models Resistant to
  Adversarial Attacks", ICLR 2018.
  """
  stateless = lambda z, state: (loss_fn(z), state)
  x_adv, _ = pgd_with_state(stateless, x, key, None, eps=eps,
                            step_size=step_size, steps=steps, norm=norm,
                            init=init, bounds=bounds)
  return x_adv


def pgd_with_state(loss_fn, x: jax.Array, key: jax.Array, state, *, eps,
                   step_size, steps: int, norm: str = 'linf',
                   init: str = 'U', bounds: Bounds = (0.0, 1.0)):
  """`pgd` whose loss threads a state through the steps.

  For attacks on a student in *train* mode (ARD, IAD): every forward pass
  uses batch statistics and updates the BatchNorm running averages, as
  PyTorch does, so `state` (the `batch_stats`) changes at every step.

  Args:
    loss_fn: `(x_adv, state) -> ([B] loss, state)`.
    x, key, eps, step_size, steps, norm, init, bounds: as `pgd`.
    state: the initial state (a pytree).

  Returns:
    `(x_adv, state)` after `steps` steps (the state has seen `steps`
    forward passes).
  """
  _validate(norm, init, steps)
  x = jax.lax.stop_gradient(x)
  eps_b = _per_example(eps, x)
  alpha = _per_example(step_size, x)

  def total(z, state):
    per_example, state = loss_fn(z, state)
    return jnp.sum(per_example), state

  grad_fn = jax.grad(total, has_aux=True)

  def body(_, carry):
    x_adv, state = carry
    g, state = grad_fn(x_adv, state)
    if norm == 'linf':
      step = jnp.sign(g)
    else:
      step = g / jnp.maximum(_l2_norm(g), 1e-12)
    return project(x_adv + alpha * step, x, eps_b, norm, bounds), state

  x_adv = random_start(x, key, eps=eps, init=init, norm=norm, bounds=bounds)
  if steps == 0:  # No step projects the (unclipped 'N') start: do it here.
    x_adv = project(x_adv, x, eps_b, norm, bounds)
  x_adv, state = jax.lax.fori_loop(0, steps, body, (x_adv, state))
  return jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(state)


def fgsm(loss_fn: LossFn, x: jax.Array, *, eps, norm: str = 'linf',
         bounds: Bounds = (0.0, 1.0)) -> jax.Array:
  """FGSM (L∞) / FGM (L2): one step of size ε from the clean point.

  References: Goodfellow et al., ICLR 2015.
  """
  return pgd(loss_fn, x, jax.random.key(0), eps=eps, step_size=eps, steps=1,
             norm=norm, init='none', bounds=bounds)


def cw_inf(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
           labels: jax.Array, key: jax.Array, *, eps=8 / 255,
           step_size=2 / 255, steps: int = 30, kappa: float = 50.0,
           init: str = 'U', bounds: Bounds = (0.0, 1.0)) -> jax.Array:
  """CW∞: L∞ PGD on the κ-margin loss (`losses.margin_loss`).

  Args:
    logits_fn: `x [B, ...] -> logits [B, K]`.
    x: `[B, ...]` clean inputs.
    labels: `[B]` true labels.
    key: PRNG key or `[B]` keys.
    eps, step_size, steps, init, bounds: as in `pgd`; defaults are the IAD
      protocol (30 steps of 2/255 at 8/255, κ = 50, init U).
    kappa: margin κ.

  Returns:
    `[B, ...]` adversarial inputs.
  """
  loss_fn = lambda z: classification.margin_loss(logits_fn(z), labels,
                                                 kappa=kappa)
  return pgd(loss_fn, x, key, eps=eps, step_size=step_size, steps=steps,
             norm='linf', init=init, bounds=bounds)
