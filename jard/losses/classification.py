"""Per-example classification and distillation losses.

Conventions (see `METHODS.md`): `KL(p || q) = sum_c p_c (log p_c - log q_c)`
with the target distribution `p` first. Functions return per-example values
`[B]` unless they take an explicit `reduction`:

* `'none'`: per-example `[B]` (summed over classes);
* `'bm'`  ("batchmean"): `sum / B`;
* `'em'`  (PyTorch's element-wise mean): `sum / (B * C)` = `bm / C`;
* `'sum'`: total sum.

Under data parallelism only the mean-type reductions (`bm`, `em`) stay exact
when the per-device value is later `pmean`-ed; `sum` is for attack objectives,
whose gradient is taken per device anyway.
"""

import jax
import jax.numpy as jnp

REDUCTIONS = ('none', 'bm', 'em', 'sum')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels.

  Args:
    logits: `[B, K]`.
    labels: `[B]` int.

  Returns:
    `[B]` values `-log softmax(logits)[y]`.
  """
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def reduce_classwise(values: jax.Array, reduction: str) -> jax.Array:
  """Reduces `[B, C]` per-class terms with one of `REDUCTIONS`."""
  if reduction == 'none':
    return jnp.sum(values, axis=-1)
  if reduction == 'bm':
    return jnp.sum(values) / values.shape[0]
  if reduction == 'em':
    return jnp.mean(values)
  if reduction == 'sum':
    return jnp.sum(values)
  raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')


def kl_divergence(target_probs: jax.Array, log_predictions: jax.Array, *,
                  reduction: str = 'none') -> jax.Array:
  """KL(target || prediction) from probabilities and log-probabilities.

  .. math:: KL = \\sum_c p_c (\\log p_c - \\log q_c),

  with `0 log 0 = 0` (PyTorch `KLDivLoss` semantics). Gradients flow into both
  arguments; callers `stop_gradient` a teacher themselves.

  Args:
    target_probs: `[B, C]` target distribution p.
    log_predictions: `[B, C]` log q.
    reduction: one of `REDUCTIONS`.

  Returns:
    `[B]` for `'none'`, else a scalar.
  """
  terms = jax.scipy.special.xlogy(target_probs, target_probs)
  terms = terms - target_probs * log_predictions
  return reduce_classwise(terms, reduction)


def distillation_kl(target_logits: jax.Array, logits: jax.Array, *,
                    temperature: float = 1.0,
                    reduction: str = 'none') -> jax.Array:
  """KL(softmax(t/τ) || softmax(s/τ)), no τ² factor (callers add it).

  Args:
    target_logits: `[B, C]` logits of the target (teacher) distribution.
    logits: `[B, C]` logits of the predicting (student) distribution.
    temperature: τ > 0.
    reduction: one of `REDUCTIONS`.

  Returns:
    `[B]` for `'none'`, else a scalar.

  References: Hinton et al., "Distilling the knowledge in a neural network",
  2015; Goldblum et al., ARD, AAAI 2020.
  """
  target = jax.nn.softmax(target_logits / temperature)
  return kl_divergence(target, jax.nn.log_softmax(logits / temperature),
                       reduction=reduction)


def margin_loss(logits: jax.Array, labels: jax.Array, *,
                kappa: float = 50.0) -> jax.Array:
  """The CW∞ objective to *maximise*: -max(z_y - max_{k≠y} z_k + κ, 0).

  The other-class maximum masks the true class by subtracting 1e4, as the
  reference implementation (IAD/GAIRAT `cwloss`) does.

  Args:
    logits: `[B, K]`.
    labels: `[B]` int.
    kappa: confidence κ; the loss saturates at 0 once the margin exceeds it.

  Returns:
    `[B]`.

  References: Carlini & Wagner, S&P 2017; Zhu et al., IAD, ICLR 2022.
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  correct = jnp.sum(onehot * logits, axis=-1)
  other = jnp.max((1.0 - onehot) * logits - onehot * 1e4, axis=-1)
  return -jax.nn.relu(correct - other + kappa)
