"""A convolution whose input gradient XLA:CPU runs on its fast kernels in loops.

Every attack differentiates the model with respect to its input inside a
`lax.fori_loop`. JAX's transpose rule for a convolution computes the input
gradient as a convolution with the reversed kernel read with its input and
output features swapped (`dim_labels=..._01oi`). Outside a loop XLA:CPU copies
that kernel into its canonical layout and runs the convolution on YNNPACK;
inside a while body it does not, and the convolution falls back to a slow
generic kernel (jaxlib 0.10.2: a ResNet-18 input gradient costs 2.5 s in a
`fori_loop` against 0.85 s outside; `benchmarks/results/profile_step_cpu.md`).

`conv_general_dilated` here is `lax.conv_general_dilated` with a custom VJP
whose input gradient writes that transpose out explicitly:

    ∂L/∂x = conv(ĝ, K̃),   K̃[.., j, g·C_in/G + i] = flip(K)[.., i, g·C_out/G + j]

with ĝ the output gradient dilated by the strides and padded as in JAX's
rule (`lhs_dilation = strides`). It is the same sum of the same products, so
the values match JAX's rule up to float summation order; the kernel gradient
is JAX's own, summed over chunks of examples (below). Reverse-mode
derivatives of any order work (the backward rule is itself differentiable);
forward mode (`jax.jvp`) does not, as with any `custom_vjp`. Only
channels-last convolutions without input dilation take this path (every
convolution of jard's models); anything else, and every backend other than
CPU, where the rule was not measured, uses `lax.conv_general_dilated` as is.

Small output maps take a second path: an ungrouped convolution whose output
has at most 16 positions per image (ResNet-18's stage 4, 4×4) runs as one
matrix product over explicit patches (im2col),

    out[b, p, o] = Σ_{w, i} x_pad[b, s·p + d·w, i] · K[w, i, o],

with JAX's own gradients. At batch 1 XLA:CPU runs such convolutions on
generic kernels, not YNNPACK (a 4×4×512 convolution: 6.2 ms against 1.8 ms
as patches); at batch 32 a ResNet-18 forward pass gets 1.13× faster, the
gradient in a loop 1.05× and the training pass 1.04×, and batch 128 is
neutral (0.95–1.01×; one thread, same-process comparisons,
`benchmarks/results/profile_step_cpu.md`). The rule depends on the map, not
on the batch, so that a step sharded over any number of devices takes the
same path for every convolution.

Depthwise convolutions (one input channel per group, MobileNetV2's) always
run as a sum of shifted, per-channel-scaled slices of the input,

    out[b, p, g·m + j] = Σ_w x_pad[b, s·p + d·w, g] · K[w, 0, g·m + j],

which XLA fuses into one loop. XLA:CPU's depthwise convolution is 10–60×
slower than this at MobileNetV2's CIFAR shapes (batch 32, one thread:
forward 243 against 8 ms at 32×32×96, the input gradient in a loop 622
against 10 ms at 32×32×144 stride 2), and the sum matches PyTorch's time.
Other grouped convolutions keep the convolution.

Kernel gradients are JAX's own rule, summed over chunks of 8 examples
(`kernel_gradient`): XLA:CPU runs a kernel gradient as a convolution that
contracts the batch, and that convolution slows down far more than linearly
with it (a 3×3 convolution at 32×32×64, one thread: 822 ms at batch 128,
213 ms in chunks of 8). A ResNet-18 training pass (parameter gradient,
train-mode BatchNorm) gets 1.26× faster at batch 32 and 1.72× at 128
(same-process comparison, one thread); its first call takes about 45% longer
to compile.

Known cost: XLA does not hoist the kernel flip and transpose out of a loop
(it never hoists a lone transpose or reverse), so each attack step copies
every kernel once (about 44 MB for ResNet-18).
"""

import functools
import itertools
import math
import operator
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _channels_last(ndim: int) -> lax.ConvDimensionNumbers:
  """NHWC / HWIO / NHWC for `ndim`-D inputs (flax's default layout)."""
  spatial = tuple(range(1, ndim - 1))
  return lax.ConvDimensionNumbers(
      lhs_spec=(0, ndim - 1) + spatial,
      rhs_spec=(ndim - 1, ndim - 2) + tuple(range(ndim - 2)),
      out_spec=(0, ndim - 1) + spatial)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with the loop-friendly input gradient on CPU.

  Same arguments and result as `lax.conv_general_dilated`; a drop-in for
  `flax.linen.Conv(conv_general_dilated=...)`. See the module docstring.
  """
  spatial = lhs.ndim - 2
  lhs_dilation = tuple(lhs_dilation or (1,) * spatial)
  rhs_dilation = tuple(rhs_dilation or (1,) * spatial)
  layout = _channels_last(lhs.ndim)
  plain = (jax.default_backend() != 'cpu'
           or lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                         dimension_numbers) != layout
           or any(d != 1 for d in lhs_dilation) or batch_group_count != 1
           or preferred_element_type is not None or lhs.dtype != rhs.dtype)
  if plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  if isinstance(padding, str):
    window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:spatial], rhs_dilation)]
    padding = lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides,
                                  padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if feature_group_count == lhs.shape[-1] and rhs.shape[-2] == 1:
    return depthwise_by_shifts(lhs, rhs, tuple(window_strides), padding,
                               rhs_dilation)
  if feature_group_count == 1 and _patches_are_faster(_output_spatial(
      lhs.shape[1:-1], rhs.shape[:spatial], window_strides, padding,
      rhs_dilation)):
    return conv_by_patches(lhs, rhs, tuple(window_strides), padding,
                           rhs_dilation, precision)
  return _conv(lhs, rhs, tuple(window_strides), padding, rhs_dilation,
               feature_group_count, precision)


def _output_spatial(in_spatial, window, strides, padding, rhs_dilation):
  return tuple(
      max(0, (size + lo + hi - _dilated(k, d)) // s + 1)
      for size, k, s, (lo, hi), d in zip(in_spatial, window, strides, padding,
                                         rhs_dilation))


def _patches_are_faster(out_spatial: Sequence[int]) -> bool:
  """Measured on XLA:CPU, jaxlib 0.10.2, one thread (see the module doc).

  Not a function of the batch: a step sharded over any number of devices
  must take the same path."""
  return math.prod(out_spatial) <= 16


def _padded_windows(lhs, window, strides, padding, rhs_dilation):
  """Yields the strided slice of the padded input under each window offset,
  in row-major offset order; each is `[B, *out_spatial, C_in]`."""
  # lax.pad, not jnp.pad: padding may be negative (a cropped 'VALID' edge).
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in padding)
              + ((0, 0, 0),))
  out_spatial = _output_spatial(lhs.shape[1:-1], window, strides, padding,
                                rhs_dilation)
  for offset in itertools.product(*(range(k) for k in window)):
    start = tuple(o * d for o, d in zip(offset, rhs_dilation))
    limit = tuple(b + (n - 1) * s + 1
                  for b, n, s in zip(start, out_spatial, strides))
    yield offset, lax.slice(x, (0,) + start + (0,),
                            (x.shape[0],) + limit + (x.shape[-1],),
                            (1,) + tuple(strides) + (1,))


def depthwise_by_shifts(lhs, rhs, strides, padding, rhs_dilation):
  """A channels-last depthwise convolution as a sum of shifted slices.

  Args:
    lhs: `[B, *in_spatial, C]`.
    rhs: `[*window, 1, C·m]` kernel (HWIO, `feature_group_count = C`, channel
      multiplier m; output channel g·m + j reads input channel g).
    strides, padding ((lo, hi) per spatial axis), rhs_dilation: as
      `lax.conv_general_dilated`'s.

  Returns:
    `[B, *out_spatial, C·m]`, equal to `lax.conv_general_dilated` up to
    float summation order; gradients are JAX's.
  """
  spatial = lhs.ndim - 2
  multiplier = rhs.shape[-1] // lhs.shape[-1]
  out = None
  for offset, window in _padded_windows(lhs, rhs.shape[:spatial], strides,
                                        padding, rhs_dilation):
    if multiplier > 1:
      window = jnp.repeat(window, multiplier, axis=-1)
    term = window * rhs[offset + (0,)]
    out = term if out is None else out + term
  return out


def conv_by_patches(lhs, rhs, strides, padding, rhs_dilation, precision=None):
  """A channels-last, ungrouped convolution as one matrix product (im2col).

  Args:
    lhs: `[B, *in_spatial, C_in]`.
    rhs: `[*window, C_in, C_out]` kernel (HWIO).
    strides, padding ((lo, hi) per spatial axis), rhs_dilation: as
      `lax.conv_general_dilated`'s.

  Returns:
    `[B, *out_spatial, C_out]`, equal to `lax.conv_general_dilated` up to
    float summation order. Gradients are JAX's (slices, a concatenation and
    a matrix product).
  """
  spatial = lhs.ndim - 2
  # Window offsets in row-major order, channels innermost: the order of
  # rhs.reshape(-1, C_out)'s rows.
  columns = [window for _, window in _padded_windows(
      lhs, rhs.shape[:spatial], strides, padding, rhs_dilation)]
  patches = jnp.concatenate(columns, axis=-1)
  out = jnp.dot(patches.reshape(-1, patches.shape[-1]),
                rhs.reshape(-1, rhs.shape[-1]), precision=precision)
  return out.reshape(patches.shape[:-1] + (rhs.shape[-1],))


def _forward(lhs, rhs, strides, padding, rhs_dilation, groups, precision):
  return lax.conv_general_dilated(
      lhs, rhs, strides, padding, rhs_dilation=rhs_dilation,
      dimension_numbers=_channels_last(lhs.ndim),
      feature_group_count=groups, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, padding, rhs_dilation, groups, precision):
  return _forward(lhs, rhs, strides, padding, rhs_dilation, groups, precision)


def _conv_fwd(lhs, rhs, strides, padding, rhs_dilation, groups, precision):
  out = _forward(lhs, rhs, strides, padding, rhs_dilation, groups, precision)
  return out, (lhs, rhs)


def _dilated(size: int, dilation: int) -> int:
  return 0 if size == 0 else 1 + dilation * (size - 1)


def input_gradient(g, lhs_shape: Sequence[int], rhs, strides, padding,
                   rhs_dilation, groups: int, precision=None):
  """∂L/∂lhs of a channels-last convolution, given g = ∂L/∂out.

  Args:
    g: `[B, *out_spatial, C_out]` output gradient.
    lhs_shape: `(B, *in_spatial, C_in)`.
    rhs: `[*window, C_in / groups, C_out]` kernel (HWIO).
    strides, padding, rhs_dilation, groups: the forward convolution's.

  Returns:
    `[B, *in_spatial, C_in]`.
  """
  spatial = rhs.ndim - 2
  window = rhs.shape[:spatial]
  in_per_group, out_channels = rhs.shape[-2], rhs.shape[-1]
  pads = []
  for i in range(spatial):
    window_i = _dilated(window[i], rhs_dilation[i])
    before = window_i - padding[i][0] - 1
    after = (lhs_shape[1 + i] + window_i - 1
             - _dilated(g.shape[1 + i], strides[i]) - before)
    pads.append((before, after))
  kernel = jnp.flip(rhs, axis=tuple(range(spatial)))
  kernel = kernel.reshape(window + (in_per_group, groups,
                                    out_channels // groups))
  kernel = jnp.transpose(kernel, tuple(range(spatial))
                         + (spatial + 2, spatial + 1, spatial))
  kernel = kernel.reshape(window + (out_channels // groups,
                                    groups * in_per_group))
  return lax.conv_general_dilated(
      g, kernel.astype(g.dtype), (1,) * spatial, pads, lhs_dilation=strides,
      rhs_dilation=rhs_dilation, dimension_numbers=_channels_last(g.ndim),
      feature_group_count=groups, precision=precision)


# Examples per kernel-gradient convolution (see `kernel_gradient`).
KERNEL_GRADIENT_CHUNK = 8


def kernel_gradient(lhs, g, rhs, strides, padding, rhs_dilation, groups: int,
                    precision=None):
  """∂L/∂rhs of a channels-last convolution, summed over chunks of examples.

      ∂L/∂K = Σ_c ∂L/∂K |_(examples of chunk c),  chunks of
      `KERNEL_GRADIENT_CHUNK` examples (the last may be smaller),

  each term JAX's own kernel gradient (`linear_transpose` of the forward
  convolution, which does not evaluate it again). XLA:CPU runs a kernel
  gradient as a convolution with batch and features swapped, the batch being
  contracted, and that convolution slows down far more than linearly with the
  batch: one thread, a 3×3 convolution at 32×32×64, 101 ms at batch 32 and
  822 ms at 128, against 54 ms and 213 ms as chunks of 8. The sum is unrolled
  at trace time (in a while loop, a kernel gradient is slower still).

  Args:
    lhs: `[B, *in_spatial, C_in]` forward input.
    g: `[B, *out_spatial, C_out]` output gradient.
    rhs: `[*window, C_in / groups, C_out]` kernel (HWIO).
    strides, padding, rhs_dilation, groups: the forward convolution's.

  Returns:
    `[*window, C_in / groups, C_out]`, equal to JAX's rule up to float
    summation order.
  """
  def chunk_gradient(lhs_chunk, g_chunk):
    (out,) = jax.linear_transpose(
        lambda k: _forward(lhs_chunk, k, strides, padding, rhs_dilation,
                           groups, precision), rhs)(g_chunk)
    return out
  size = KERNEL_GRADIENT_CHUNK
  return functools.reduce(operator.add, (
      chunk_gradient(lhs[start:start + size], g[start:start + size])
      for start in range(0, lhs.shape[0], size)))


def _conv_bwd(strides, padding, rhs_dilation, groups, precision, residuals,
              g):
  lhs, rhs = residuals
  g_rhs = kernel_gradient(lhs, g, rhs, strides, padding, rhs_dilation, groups,
                          precision)
  g_lhs = input_gradient(g, lhs.shape, rhs, strides, padding, rhs_dilation,
                         groups, precision)
  return g_lhs.astype(lhs.dtype), g_rhs


_conv.defvjp(_conv_fwd, _conv_bwd)
