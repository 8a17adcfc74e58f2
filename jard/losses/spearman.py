r"""Soft-rank Spearman correlation and SmaraAD's slack-matching loss.

The soft rank of a vector :math:`u \in \mathbb{R}^n` (one example's class
scores) is the pairwise-sigmoid rank of SmaraAD (Yin et al., CVPR 2024,
Eq. 4),

.. math:: r_i(u) = \sum_{j=1}^{n} \sigma\big(\gamma (u_j - u_i)\big),

a *descending* rank: the largest entry gets ≈ 0.5 and the smallest
≈ n − 0.5 (the self term adds σ(0) = 1/2 to every rank, which cancels in rank
differences). As γ → ∞ it tends to the hard rank
:math:`\#\{j: u_j > u_i\} + \tfrac12 \#\{j: u_j = u_i\}` (ties get their
mid-rank). Spearman's coefficient (Eq. 2–3) on these ranks is

.. math:: \rho(u, v) = 1 - \frac{6 \sum_i (r_i(u) - r_i(v))^2}{n (n^2 - 1)},

computed per example over the class axis (the released snippet ranks across
the whole batch and drops the gradient; `seed_methods_facts.md` §1). The
slack-matching loss (Eq. 5) is :math:`L_{sm} = -\rho(p_S, p_T)` on predicted
*probabilities*: with γ = 1000 logits would give hard ranks and no gradient.

Every function maps `[..., n]` to `[...]` (or `[..., n]` for ranks) and works
under `jit` and `vmap`; the pairwise matrix is `[..., n, n]`, O(n²) per
example with no Python loop.
"""

import jax
import jax.numpy as jnp


def soft_rank(values: jax.Array, *, gamma: float) -> jax.Array:
  """Descending soft ranks `r_i = Σ_j σ(γ (u_j − u_i))` over the last axis.

  Args:
    values: `[..., n]`.
    gamma: the sharpness γ (SmaraAD: 1000 on probabilities).

  Returns:
    `[..., n]` soft ranks in (0, n); they sum to n²/2.
  """
  diffs = values[..., None, :] - values[..., :, None]  # [..., i, j]: u_j − u_i
  return jnp.sum(jax.nn.sigmoid(gamma * diffs), axis=-1)


def hard_rank(values: jax.Array) -> jax.Array:
  """The γ → ∞ limit of `soft_rank`: `#{u_j > u_i} + #{u_j = u_i}/2`.

  Equal to scipy's `rankdata(-u, 'average') − 1/2`. Not differentiable; for
  evaluation and tests.
  """
  greater = values[..., None, :] > values[..., :, None]
  equal = values[..., None, :] == values[..., :, None]
  return (jnp.sum(greater, axis=-1)
          + 0.5 * jnp.sum(equal, axis=-1)).astype(values.dtype)


def spearman_from_ranks(ranks_u: jax.Array, ranks_v: jax.Array) -> jax.Array:
  """`1 − 6 Σ_i d_i² / (n (n² − 1))` over the last axis, `[..., n] -> [...]`.

  The untied formula of Eq. 2: exact for permutation ranks, ±1 for equal or
  reversed inputs, and only approximately inside [−1, 1] for soft ranks.
  """
  n = ranks_u.shape[-1]
  if n < 2:
    raise ValueError(f'Spearman needs at least 2 entries per example, got {n}.')
  squared = jnp.sum((ranks_u - ranks_v) ** 2, axis=-1)
  return 1.0 - 6.0 * squared / (n * (n * n - 1))


def soft_spearman(u: jax.Array, v: jax.Array, *, gamma: float) -> jax.Array:
  """Per-example soft Spearman ρ(u, v), `[..., n] × [..., n] -> [...]`."""
  return spearman_from_ranks(soft_rank(u, gamma=gamma),
                             soft_rank(v, gamma=gamma))


def hard_spearman(u: jax.Array, v: jax.Array) -> jax.Array:
  """Per-example Spearman ρ on hard ranks (for evaluation; no gradient)."""
  return spearman_from_ranks(hard_rank(u), hard_rank(v))


def slack_matching_loss(student_probs: jax.Array, target_probs: jax.Array, *,
                        gamma: float = 1000.0,
                        stop_target: bool = True) -> jax.Array:
  """SmaraAD's L_sm = −ρ(p_S, p_T) per example (Eq. 5), `[B, C] -> [B]`.

  Args:
    student_probs: `[B, C]` student probabilities (softmax outputs).
    target_probs: `[B, C]` probabilities to match: the teacher's (stopped),
      or the student's own on another input (SmaraAD++ self-learning, where
      `stop_target=False` keeps both sides trainable).
    gamma: soft-rank sharpness.
    stop_target: `stop_gradient` on the target side.

  Returns:
    `[B]` values in about [−1, 1]; −1 when the class orders agree.
  """
  if stop_target:
    target_probs = jax.lax.stop_gradient(target_probs)
  return -soft_spearman(student_probs, target_probs, gamma=gamma)
