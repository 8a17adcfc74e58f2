"""AutoAttack (Croce & Hein, ICML 2020): the attack ensemble, as a pure cascade.

The versions and their attacks, in the reference's order and with its
settings (`attacks_facts.md` §1.1):

| version    | attacks                                                         |
|------------|-----------------------------------------------------------------|
| `standard` | APGD-CE (1 run), APGD-T (9 targets), FAB-T (9 targets), Square  |
|            | (5000 queries)                                                  |
| `plus`     | APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts),       |
|            | Square, APGD-T, FAB-T                                           |
| `rand`     | APGD-CE and APGD-DLR with 20 EoT gradient samples per iteration |

Every attack runs only on the points that are still robust: the clean pass
keeps the correctly classified ones, and each attack gets the survivors of
the previous ones as its `active` mask, always starting from the clean
input (AutoAttack issue #85). A point is broken when the model misclassifies
the attack's output (the reference re-evaluates it too), and the result is
the per-example worst case over the attacks.

`autoattack` runs the whole cascade on one batch under `jit`: the "subset"
is a mask and every attack keeps per-example state. Each attack draws its
randomness from `fold_in(keys[i], attack_id)`, so an example's result
depends only on itself: running the cascade equals running each attack alone
on the points the previous ones left, and the sharded host runner
(`jard.evaluate_autoattack`) gets the same numbers for any batch size or
device count.
"""

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jard.attacks import apgd as apgd_lib
from jard.attacks import fab as fab_lib
from jard.attacks import square as square_lib

# Stable ids (the key of attack `name` is `fold_in(key, ATTACK_IDS[name])`),
# so a version and a custom list give an attack the same randomness.
ATTACK_IDS = {'apgd-ce': 0, 'apgd-dlr': 1, 'apgd-t': 2, 'fab': 3,
              'fab-t': 4, 'square': 5}

VERSIONS = {
    'standard': ('apgd-ce', 'apgd-t', 'fab-t', 'square'),
    'plus': ('apgd-ce', 'apgd-dlr', 'fab', 'square', 'apgd-t', 'fab-t'),
    'rand': ('apgd-ce', 'apgd-dlr'),
}

# attack(logits_fn, x, labels, keys, *, eps, active) -> (x_adv, fooled)
AttackFn = Callable[..., tuple[jax.Array, jax.Array]]


def attack_fns(version: str = 'standard', *, n_iter: int = 100,
               n_queries: int = 5000, n_target_classes: int = 9,
               eot_iter: int = 20) -> dict[str, AttackFn]:
  """The attacks of a version with the reference's settings, by name.

  Args:
    version: 'standard', 'plus' or 'rand'.
    n_iter: APGD and FAB iterations (reference: 100).
    n_queries: Square's query budget (reference: 5000; CIARD's protocol 100).
    n_target_classes: targets of APGD-T and FAB-T (reference: 9).
    eot_iter: gradient samples per APGD iteration in `rand` (reference: 20).
  """
  if version not in VERSIONS:
    raise ValueError(f'AutoAttack version {version!r}; choose from '
                     f'{sorted(VERSIONS)}.')
  restarts = 5 if version == 'plus' else 1
  eot = eot_iter if version == 'rand' else 1
  apgd = functools.partial(apgd_lib.apgd_attack, n_iter=n_iter,
                           eot_iter=eot)
  fns = {
      'apgd-ce': functools.partial(apgd, loss='ce', n_restarts=restarts),
      'apgd-dlr': functools.partial(apgd, loss='dlr', n_restarts=restarts),
      'apgd-t': functools.partial(apgd, loss='dlr_targeted', n_restarts=1,
                                  n_target_classes=n_target_classes),
      'fab-t': functools.partial(fab_lib.fab_t, n_iter=n_iter,
                                 n_target_classes=n_target_classes),
      'square': functools.partial(square_lib.square, n_queries=n_queries,
                                  p_init=0.8),
  }
  if version == 'plus':
    fns['fab'] = functools.partial(fab_lib.fab_untargeted, n_iter=n_iter,
                                   n_restarts=restarts)
  return {name: fns[name] for name in VERSIONS[version]}


def attack_keys(keys: jax.Array, name: str) -> jax.Array:
  """The per-example keys of attack `name`: `fold_in(keys[i], id)`."""
  return jax.vmap(lambda k: jax.random.fold_in(k, ATTACK_IDS[name]))(keys)


def predict(logits_fn, x: jax.Array, keys: jax.Array,
            stochastic: bool) -> jax.Array:
  """Predicted classes; a stochastic model gets its own evaluation keys."""
  if stochastic:
    return jnp.argmax(logits_fn(x, jax.vmap(
        lambda k: jax.random.fold_in(k, 0xE7A1))(keys)), -1)
  return jnp.argmax(logits_fn(x), -1)


def run_attack(fn: AttackFn, name: str, logits_fn, x, labels, keys, *,
               eps: float, active: jax.Array, stochastic: bool = False):
  """One attack on the `active` points; `(x_adv, broken [B])`.

  `broken` is decided, as in the reference, by the model's prediction on the
  attack's output; `x_adv` is that output where broken and `x` elsewhere.
  """
  x_adv, _ = fn(logits_fn, x, labels, attack_keys(keys, name), eps=eps,
                active=active)
  broken = active & (predict(logits_fn, x_adv, keys, stochastic) != labels)
  expand = lambda v: v.reshape(v.shape + (1,) * (x.ndim - 1))
  return jnp.where(expand(broken), x_adv, x), broken


def autoattack(logits_fn, x: jax.Array, labels: jax.Array, keys: jax.Array,
               *, eps: float, version: str = 'standard',
               attacks: Optional[dict[str, AttackFn]] = None,
               active: Optional[jax.Array] = None,
               stochastic: Optional[bool] = None, **settings) -> dict:
  """The AutoAttack cascade on one batch, under `jit`.

  Args:
    logits_fn: `x [B, H, W, C] -> logits [B, K]`, eval mode; for `rand`, a
      stochastic `(x, keys [B]) -> logits`.
    x: `[B, H, W, C]` clean images in [0, 1].
    labels: `[B]`.
    keys: `[B]` per-example PRNG keys (e.g. `fold_in(seed_key, index)`).
    eps: L∞ radius (8/255 for CIFAR).
    version: 'standard', 'plus' or 'rand' (ignored with `attacks`).
    attacks: a custom ordered `{name: attack}` (see `attack_fns`).
    active: `[B]` bool, the points to evaluate (padding: False).
    stochastic: whether `logits_fn` takes keys (default: version 'rand').
    **settings: `attack_fns` keyword arguments (`n_queries`, ...).

  Returns:
    `{'x_adv': [B, ...], 'clean': [B] bool, 'robust': [B] bool,
    'broken_by': {name: [B] bool}}`: `clean` is correct on the clean input,
    `robust` survived every attack, `broken_by[name]` was first broken by
    that attack. `x_adv` is the breaking point, or `x` for robust points.
  """
  if attacks is None:
    attacks = attack_fns(version, **settings)
  if stochastic is None:
    stochastic = version == 'rand'
  b = x.shape[0]
  active = jnp.ones((b,), bool) if active is None else active
  clean = active & (predict(logits_fn, x, keys, stochastic) == labels)
  robust, x_out = clean, x
  broken_by = {}
  expand = lambda v: v.reshape(v.shape + (1,) * (x.ndim - 1))
  for name, fn in attacks.items():  # a handful of distinct attacks
    x_adv, broken = run_attack(fn, name, logits_fn, x, labels, keys,
                               eps=eps, active=robust,
                               stochastic=stochastic)
    x_out = jnp.where(expand(broken), x_adv, x_out)
    robust = robust & ~broken
    broken_by[name] = broken
  return {'x_adv': jax.lax.stop_gradient(x_out), 'clean': clean,
          'robust': robust, 'broken_by': broken_by}
