"""Square Attack (L∞), as the AutoAttack reference implements it.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020. A random search
on the margin loss of the logits, to minimise (`attacks_facts.md` §1.5):

* Loss: `m(x) = z_y − max_{i≠y} z_i`; an example is fooled once `m ≤ 0`.
* Init: vertical stripes, `x_0 = clip(x + ε σ, 0, 1)` with one random sign
  `σ` per (image, column, channel), constant along the rows.
* Iteration `t` (0-based) changes a square of side `s = min(max(round(√(p_t
  h w)), 1), min(h, w))` at a uniform top-left corner `vh ∈ {0, …, h − s −
  1}` (`{0}` when `s = h`; likewise `vw`), the reference's `randint(0, h −
  s)` (so for `s < h` the last row and column are changed by the init
  only, as in the reference). Inside the square each channel becomes
  `x_best + 2ε σ_c`, then `Π` projects to the ε-ball around `x` and to
  [0, 1], so the square reads `x ± ε`. The candidate replaces `x_best` when
  its margin is lower (or ≤ 0); a point stops once its margin is ≤ 0.
* `p_t = p_init / 2^k`, `k` the number of bounds 10, 50, 200, 500, 1000,
  2000, 4000, 6000, 8000 that `t` exceeds (with `rescale`, `t` is first
  mapped to `⌊t · 10000 / n_queries⌋`). At 32×32 and 5000 queries, `s` runs
  through 29, 20, 14, 10, 7, 5, 4, 3. The cap at `min(h, w)` (reference
  issue #95) only acts for non-square images or `p_init` near 1.
* Only points classified correctly when clean are attacked; the result is
  `x_best` for fooled points and the clean `x` for the others.

Deliberate deviation from AutoAttack: its PyTorch code draws *one* window
and one set of channel signs per iteration, shared by the whole batch. Here
every example draws its own, from its own key (as the paper's code does, but
without its redraw-until-the-image-changes loop): the init from
`fold_in(keys[i], 0)`, iteration `t` from `fold_in(keys[i], t + 1)`. So an
example's trajectory depends only on its key, input and label, not on the
other examples in its batch: the AutoAttack cascade stays exact under masking
and compaction, and 1-device and 8-device runs agree.

Everything runs under `jit`: one `while_loop` over iterations that stops when
no example is left to fool; the window is a mask built by comparisons.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

LogitsFn = Callable[[jax.Array], jax.Array]

# p halves each time the iteration index passes one of these.
_P_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it, n_queries: int, p_init: float = 0.8,
               rescale: bool = False):
  """Fraction `p` of pixels changed at 0-based iteration `it`.

  Python ints give a Python float with the reference's own arithmetic
  (`int(it / n_queries * 10000)` when rescaling); arrays (traced or not)
  give a float32 array, rescaled with `it * 10000 // n_queries`.
  """
  if isinstance(it, (int, np.integer)):
    if rescale:
      it = int(it / n_queries * 10000)
    return p_init / 2 ** sum(it > b for b in _P_BOUNDS)
  it = jnp.asarray(it)
  if rescale:
    it = it * 10000 // n_queries
  halvings = jnp.sum(it[..., None] > jnp.asarray(_P_BOUNDS), axis=-1)
  return p_init / 2.0 ** halvings


def square_side(p, h: int, w: int):
  """Side `s = min(max(round(√(p h w)), 1), min(h, w))` of the square.

  Rounds half to even (Python's `round`, like `jnp.round`). A Python float
  gives an int, an array gives an int32 array.
  """
  if isinstance(p, (float, int, np.floating)):
    return min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w))
  s = jnp.round(jnp.sqrt(jnp.asarray(p) * (h * w))).astype(jnp.int32)
  return jnp.clip(s, 1, min(h, w))


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`z_y − max_{i≠y} z_i`, shapes `[B, K]`, `[B]` -> `[B]`."""
  z_y = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  is_y = jnp.arange(logits.shape[-1]) == labels[:, None]
  return z_y - jnp.max(jnp.where(is_y, -jnp.inf, logits), axis=-1)


def _stripes_init(x: jax.Array, keys: jax.Array, eps: float) -> jax.Array:
  """`clip(x ± ε, 0, 1)`, one sign per (image, column, channel): `[B,1,W,C]`."""
  sign = jax.vmap(lambda k: jax.random.rademacher(
      jax.random.fold_in(k, 0), (1,) + x.shape[2:], x.dtype))(keys)
  return jnp.clip(x + eps * sign, 0.0, 1.0)


def _window_and_signs(keys, t, s, h: int, w: int, c: int, dtype):
  """Per-example top-left corners `[B]`, `[B]` and channel signs `[B, C]`."""
  def draw(key):
    k_h, k_w, k_c = jax.random.split(jax.random.fold_in(key, t + 1), 3)
    # randint's upper end is exclusive; at s == h the only corner is 0.
    vh = jax.random.randint(k_h, (), 0, jnp.maximum(h - s, 1))
    vw = jax.random.randint(k_w, (), 0, jnp.maximum(w - s, 1))
    return vh, vw, jax.random.rademacher(k_c, (c,), dtype)
  return jax.vmap(draw)(keys)


def square(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
           keys: jax.Array, *, eps: float, n_queries: int = 5000,
           p_init: float = 0.8, rescale_schedule: bool = False,
           active=None, return_queries: bool = False):
  """One Square Attack run (L∞, margin loss, stripes init).

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]` (eval mode).
    x: clean images `[B, H, W, C]` in [0, 1].
    labels: `[B]` true labels.
    keys: `[B]` per-example PRNG keys.
    eps: L∞ radius.
    n_queries: the iteration budget (static); AutoAttack uses 5000.
    p_init: the initial fraction of pixels per square.
    rescale_schedule: map the p schedule onto `n_queries` (the reference's
      `resc_schedule`; AutoAttack keeps it off).
    active: optional `[B]` bool; inactive examples are skipped: never
      fooled, clean `x` returned, no effect on when the loop stops.
    return_queries: also return the `[B]` int32 forward passes used per
      example: 1 for the init plus 1 per iteration before the margin reached
      0 (0 for inactive and clean-misclassified examples).

  Returns:
    `(x_adv, fooled)`: `fooled [B] = active & (misclassified when clean or
    margin ≤ 0 reached)`; `x_adv` is the point that reached it (the clean
    `x` for clean-misclassified and unfooled examples).
  """
  x = jax.lax.stop_gradient(x)
  b, h, w, c = x.shape
  active = jnp.ones((b,), bool) if active is None else jnp.asarray(active)
  expand = lambda v: v.reshape((b, 1, 1, 1))
  # Side lengths per iteration, computed as the reference does (static).
  sides = jnp.asarray([square_side(p_schedule(i, n_queries, p_init,
                                              rescale_schedule), h, w)
                       for i in range(max(n_queries, 1))], jnp.int32)
  rows = jnp.arange(h).reshape(1, h, 1, 1)
  cols = jnp.arange(w).reshape(1, 1, w, 1)

  clean_ok = jnp.argmax(logits_fn(x), -1) == labels
  attacked = active & clean_ok
  x_best = _stripes_init(x, keys, eps)
  margin_min = margin(logits_fn(x_best), labels)
  queries = attacked.astype(jnp.int32)

  def running(margin_min):
    return attacked & (margin_min > 0)

  def cond(state):
    t, _, margin_min, _ = state
    return (t < n_queries) & jnp.any(running(margin_min))

  def body(state):
    t, x_best, margin_min, queries = state
    todo = running(margin_min)
    s = sides[t]
    vh, vw, sign = _window_and_signs(keys, t, s, h, w, c, x.dtype)
    vh, vw = expand(vh), expand(vw)
    window = ((rows >= vh) & (rows < vh + s) & (cols >= vw) &
              (cols < vw + s))
    x_new = jnp.where(window, x_best + 2.0 * eps * sign[:, None, None, :],
                      x_best)
    x_new = jnp.clip(jnp.clip(x_new, x - eps, x + eps), 0.0, 1.0)
    m = margin(logits_fn(x_new), labels)
    accept = todo & ((m < margin_min) | (m <= 0))
    return (t + 1, jnp.where(expand(accept), x_new, x_best),
            jnp.where(accept, m, margin_min), queries + todo)

  _, x_best, margin_min, queries = jax.lax.while_loop(
      cond, body, (jnp.int32(0), x_best, margin_min, queries))
  reached = attacked & (margin_min <= 0)
  x_adv = jnp.where(expand(reached), x_best, x)
  fooled = active & (~clean_ok | reached)
  x_adv, fooled = jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(fooled)
  if return_queries:
    return x_adv, fooled, jax.lax.stop_gradient(queries)
  return x_adv, fooled
