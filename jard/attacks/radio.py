"""The radio threat model: L2 attacks with a perturbation-to-noise budget.

A radio vector `x_i` received at signal-to-noise ratio `SNR_i` may be
perturbed with power `PNR` dB relative to the noise (Sadeghi & Larsson, IEEE
WCL 2019; `amc_facts.md` §3.2–3.3). With the received power taken as
`‖x_i‖²`, the per-example L2 budget is

.. math:: \\epsilon_i = \\|x_i\\|_2 \\cdot 10^{(PNR - SNR_i) / 20},

so `10·log10(‖δ‖² / ‖x_i‖²) + SNR_i = PNR` at the budget. Signals are not
bounded, so no box projection follows the ball projection.

* FGM: one normalised-gradient step of size ε_i
  (`δ = ε_i ∇ₓL / ‖∇ₓL‖₂`).
* PGD: L2 PGD of `steps` steps of size `relative_step · ε_i` (2.5 ε / steps
  by default, Madry et al.), uniform random start in the ε_i-ball, projected
  onto the ball after every step.
"""

import jax
import jax.numpy as jnp

# The package re-exports the function `pgd`, which shadows the module name.
from jard.attacks.pgd import fgsm as _fgsm
from jard.attacks.pgd import pgd as _pgd


def pnr_budget(x: jax.Array, snr_db: jax.Array, pnr_db) -> jax.Array:
  """Per-example L2 budgets ε_i `[B]` for inputs `x [B, ...]` at `snr_db [B]`.

  `pnr_db` is a scalar (traced or static) or `[B]`.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))
  return norm * 10.0 ** ((jnp.asarray(pnr_db, x.dtype)
                          - snr_db.astype(x.dtype)) / 20.0)


def fgm(loss_fn, x: jax.Array, snr_db: jax.Array, *, pnr_db) -> jax.Array:
  """FGM at a PNR budget: one L2 step of size ε_i from `x`.

  Args:
    loss_fn: `x_adv [B, ...] -> [B]` per-example loss to maximise.
    x: `[B, ...]` clean signals.
    snr_db: `[B]` the examples' SNR labels in dB.
    pnr_db: the perturbation-to-noise ratio in dB.

  Returns:
    `[B, ...]` adversarial signals with `‖x_adv − x‖₂ ≤ ε_i`.
  """
  eps = pnr_budget(x, snr_db, pnr_db)
  return _fgsm(loss_fn, x, eps=eps, norm='l2', bounds=None)


def pgd(loss_fn, x: jax.Array, key: jax.Array, snr_db: jax.Array, *, pnr_db,
        steps: int = 10, relative_step: float = 0.25,
        init: str = 'U') -> jax.Array:
  """L2 PGD at a PNR budget (module docstring); `key` as in `attacks.pgd`."""
  eps = pnr_budget(x, snr_db, pnr_db)
  return _pgd(loss_fn, x, key, eps=eps, step_size=relative_step * eps,
              steps=steps, norm='l2', init=init, bounds=None)
