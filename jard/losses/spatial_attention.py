r"""Spatial attention maps and ADER's attention-distillation loss.

ADER (Niu et al., 2025) distils a teacher's spatial attention into the
student's attention branch (`jard.models.attention_branch`) with

.. math:: L_{att}(x) = KL\big(P(M_S(x)) \,\|\, P(M_T(x))\big)
          = \sum_{i} P(M_S)_i \big(\log P(M_S)_i - \log P(M_T)_i\big)

(Eq. 3, the paper's order: the student's distribution first), where P turns
an `[h, w]` map into a distribution over its h·w locations, either

* `softmax`: :math:`P(M) = \mathrm{softmax}(\mathrm{vec}(M)/\tau)`, τ = 1, or
* `l1`: :math:`P(M) = \mathrm{vec}(M) / \sum \mathrm{vec}(M)` (maps ≥ 0),
  with logs of `P + 1e-8` so empty locations stay finite.

The sum runs over locations per example (`bm` after the batch mean). A
teacher without an attention branch (an imported checkpoint) provides the
activation attention of its last feature map (Zagoruyko & Komodakis, ICLR
2017), :math:`\sum_k A_k^2`, divided by its per-example maximum so that, like
the branch's sigmoid map, it lies in [0, 1] (METHODS.md leaves its scale
open; without it the softmax of raw squared activations is nearly one-hot).
The teacher map is resized bilinearly to the student's map size.
"""

import jax
import jax.numpy as jnp

from jard.losses import cam as cam_lib

NORMALIZATIONS = ('softmax', 'l1')
L1_EPS = 1e-8


def activation_attention(features: jax.Array) -> jax.Array:
  """`Σ_k A_k² / max` per example: `[B, H, W, K] -> [B, H, W]` in [0, 1]."""
  energy = jnp.sum(features ** 2, axis=-1)
  return energy / (jnp.max(energy, axis=(-2, -1), keepdims=True) + 1e-12)


def map_distribution(attention: jax.Array, *, normalization: str = 'softmax',
                     temperature: float = 1.0) -> jax.Array:
  """`[B, h, w]` map -> `[B, h·w]` log-probabilities over locations."""
  flat = attention.reshape(attention.shape[0], -1)
  if normalization == 'softmax':
    return jax.nn.log_softmax(flat / temperature, axis=-1)
  if normalization == 'l1':
    probs = flat / jnp.sum(flat, axis=-1, keepdims=True)
    return jnp.log(probs + L1_EPS)
  raise ValueError(f'config.method.map_normalization={normalization!r}: '
                   f'choose one of {NORMALIZATIONS}.')


def attention_kl(student_map: jax.Array, teacher_map: jax.Array, *,
                 normalization: str = 'softmax',
                 temperature: float = 1.0) -> jax.Array:
  """ADER's KL(P(M_S) ‖ P(M_T)) per example (Eq. 3), `[B]`.

  Args:
    student_map: `[B, h, w]` student attention map (the branch's M).
    teacher_map: `[B, H, W]` teacher map; resized to `(h, w)` and stopped.
    normalization: `softmax` (of map/τ) or `l1`.
    temperature: τ of the softmax normalisation.
  """
  teacher_map = cam_lib.resize_cam(jax.lax.stop_gradient(teacher_map),
                                   student_map.shape[-2:])
  log_s = map_distribution(student_map, normalization=normalization,
                           temperature=temperature)
  log_t = map_distribution(teacher_map, normalization=normalization,
                           temperature=temperature)
  if normalization == 'l1':  # the probabilities themselves, without the ε
    flat = student_map.reshape(student_map.shape[0], -1)
    probs = flat / jnp.sum(flat, axis=-1, keepdims=True)
  else:
    probs = jnp.exp(log_s)
  return jnp.sum(probs * (log_s - log_t), axis=-1)
