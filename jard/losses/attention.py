"""Attention-map distillation for transformers (ATARD).

A transformer layer's attention map is its head-averaged attention
probability matrix

.. math:: \\bar A^{l} = \\frac{1}{H} \\sum_{h=1}^{H} A^{l}_{h}
   \\in [0, 1]^{T \\times T},

with rows summing to one. A compact student has fewer layers than its
teacher, so each student layer `l` is matched to the mean of a group `G(l)`
of teacher layers (ATARD: teacher layers 1–3 → student layer 1 and 4–6 →
student layer 2):

.. math:: L_{att}(x) = \\sum_{l} \\frac{1}{T^2}
   \\big\\| \\bar A_S^{l}(x) - \\frac{1}{|G(l)|} \\sum_{k \\in G(l)}
   \\bar A_T^{k}(x) \\big\\|_F^2 .

The student and teacher need the same token count `T`, not the same width or
head count. Reference: Zhang et al., IEEE IoT Journal 2023 (arXiv 2506.11892),
Eq. 14–15; the grouping and the per-entry mean are METHODS.md's decisions.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

LayerGroups = Sequence[Sequence[int]]


def parse_layer_groups(spec: str, field: str = 'config.method.layer_groups'
                       ) -> tuple[tuple[int, ...], ...]:
  """`'1-3,4-6'` (1-based, inclusive ranges or single layers) -> 0-based groups.

  `'1-3,4-6'` -> `((0, 1, 2), (3, 4, 5))`; `'2,5'` -> `((1,), (4,))`.
  """
  groups = []
  for part in str(spec).split(','):
    part = part.strip()
    first, sep, last = part.partition('-')
    try:
      lo, hi = int(first), int(last if sep else first)
    except ValueError:
      lo, hi = 0, -1
    if lo < 1 or hi < lo:
      raise ValueError(
          f'{field}={spec!r}: each comma-separated group must be a 1-based '
          'teacher layer "k" or an inclusive range "a-b", one group per '
          'student layer (e.g. "1-3,4-6").')
    groups.append(tuple(range(lo - 1, hi)))
  return tuple(groups)


def head_average(attention: jax.Array) -> jax.Array:
  """`[B, H, T, T]` probabilities -> `[B, T, T]` head-averaged map."""
  return jnp.mean(attention, axis=1)


def group_maps(attention: Sequence[jax.Array], groups: LayerGroups
               ) -> list[jax.Array]:
  """Head-averaged maps of layer groups: one `[B, T, T]` per group."""
  maps = []
  for group in groups:
    if max(group) >= len(attention):
      raise ValueError(f'layer group {[g + 1 for g in group]} (1-based) needs'
                       f' {max(group) + 1} teacher layers; the teacher has '
                       f'{len(attention)}.')
    maps.append(jnp.mean(jnp.stack([head_average(attention[k])
                                    for k in group]), axis=0))
  return maps


def attention_map_loss(student_attention: Sequence[jax.Array],
                       teacher_attention: Sequence[jax.Array],
                       groups: LayerGroups) -> jax.Array:
  """Per-example ATARD attention loss (module docstring formula).

  Args:
    student_attention: per-layer student probabilities `[B, H_S, T, T]`.
    teacher_attention: per-layer teacher probabilities `[B, H_T, T, T]`;
      callers pass a frozen teacher's (the loss does not stop gradients).
    groups: one group of 0-based teacher layers per student layer.

  Returns:
    `[B]`: the sum over student layers of the per-entry mean squared
    difference.
  """
  if len(groups) != len(student_attention):
    raise ValueError(
        f'{len(groups)} layer groups for a student with '
        f'{len(student_attention)} attention layers; give one teacher layer '
        'group per student layer (config.method.layer_groups).')
  teacher_maps = group_maps(teacher_attention, groups)
  total = 0.0
  for student, teacher in zip(student_attention, teacher_maps):
    student = head_average(student)
    if student.shape != teacher.shape:
      raise ValueError(
          f'student attention map {student.shape[1:]} and teacher map '
          f'{teacher.shape[1:]} differ: both models need the same token '
          'count (the same signal length and patch size).')
    total = total + jnp.mean(jnp.square(student - teacher), axis=(1, 2))
  return total
