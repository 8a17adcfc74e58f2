"""The TRADES and MART outer losses, per example.

Both follow their official code, including which terms are *not* detached:
the clean prediction in the TRADES KL and the MART KL/weight carry gradient.
"""

import jax
import jax.numpy as jnp

from jard.losses.classification import cross_entropy
from jard.losses.classification import kl_divergence


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array,
                labels: jax.Array, *, beta: float = 6.0) -> jax.Array:
  """TRADES: CE(f(x), y) + β KL(p(x) || p(x')), per example.

  The batch mean of this is exactly the reference `CE_mean + β·bm KL`.

  Args:
    clean_logits: `[B, K]` logits on clean inputs.
    adv_logits: `[B, K]` logits on adversarial inputs.
    labels: `[B]`.
    beta: β (1/λ in the paper); 6 by default.

  Returns:
    `[B]`.

  References: Zhang et al., "Theoretically Principled Trade-off between
  Robustness and Accuracy", ICML 2019.
  """
  kl = kl_divergence(jax.nn.softmax(clean_logits),
                     jax.nn.log_softmax(adv_logits))
  return cross_entropy(clean_logits, labels) + beta * kl


def mart_loss(clean_logits: jax.Array, adv_logits: jax.Array,
              labels: jax.Array, *, beta: float = 6.0) -> jax.Array:
  """MART, per example.

  .. math::
    CE(f(x'), y) - \\log(1.0001 - p'_{\\hat y} + 10^{-12})
    + β KL(p \\| p') (1.0000001 - p_y)

  where `ŷ` is the most likely class of `p'` other than `y` and the KL uses
  `log(p' + 1e-12)`, as the official code does. Nothing is detached.

  Args:
    clean_logits: `[B, K]`.
    adv_logits: `[B, K]`.
    labels: `[B]`.
    beta: β; 5 for ResNet-18, 6 for WRN in the official code.

  Returns:
    `[B]`.

  References: Wang et al., "Improving Adversarial Robustness Requires
  Revisiting Misclassified Examples", ICLR 2020.
  """
  adv_probs = jax.nn.softmax(adv_logits)
  clean_probs = jax.nn.softmax(clean_logits)
  # Top-2 of p': take the runner-up whenever the top class is the label.
  _, top2 = jax.lax.top_k(adv_probs, 2)
  other = jnp.where(top2[:, 0] == labels, top2[:, 1], top2[:, 0])
  p_other = jnp.take_along_axis(adv_probs, other[:, None], axis=-1)[:, 0]
  bce = cross_entropy(adv_logits, labels) - jnp.log(1.0001 - p_other + 1e-12)
  kl = kl_divergence(clean_probs, jnp.log(adv_probs + 1e-12))
  p_true = jnp.take_along_axis(clean_probs, labels[:, None], axis=-1)[:, 0]
  return bce + beta * kl * (1.0000001 - p_true)
