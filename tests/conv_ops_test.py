"""Tests for `jard.models.conv_ops`: JAX's convolution gradients, loop-friendly.

The custom input gradient must equal JAX's transpose rule for every
convolution shape jard's models use (strides, symmetric and 'SAME'/'VALID'
padding, dilation, grouped and depthwise), to first and second order; and
inside a `fori_loop` XLA:CPU must compile it to as many YNNPACK fusions as a
single gradient gets, which is what makes attack loops 3× faster on CPU.
Small output maps run as a matrix product of patches instead; the same
equalities hold on that path.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jard.models import conv_ops

_LAYOUT = ('NHWC', 'HWIO', 'NHWC')

# (height, kernel, stride, padding, rhs dilation, groups, C_in, C_out)
_CASES = [
    (8, 3, 1, ((1, 1), (1, 1)), 1, 1, 4, 6),
    (8, 3, 2, ((1, 1), (1, 1)), 1, 1, 4, 6),  # PyTorch-style stride 2
    (9, 3, 2, ((1, 1), (1, 1)), 1, 1, 4, 6),  # odd size: one row unused
    (8, 1, 2, ((0, 0), (0, 0)), 1, 1, 4, 6),  # 1×1 shortcut
    (8, 3, 1, 'SAME', 1, 1, 4, 6),
    (9, 3, 2, 'SAME', 1, 1, 3, 5),
    (8, 3, 1, 'VALID', 2, 1, 4, 6),
    (8, 3, 2, ((1, 1), (1, 1)), 1, 4, 4, 4),  # depthwise (MobileNetV2)
    (9, 3, 1, 'SAME', 2, 4, 4, 8),  # depthwise, channel multiplier 2
    (8, 3, 1, ((1, 1), (1, 1)), 1, 2, 4, 6),  # grouped
    (7, 5, 3, ((2, 1), (0, 2)), 1, 1, 2, 3),  # asymmetric padding
]


def _convs(stride, padding, dilation, groups):
  def make(fn):
    return lambda x, w: fn(x, w, (stride, stride), padding,
                           rhs_dilation=(dilation, dilation),
                           dimension_numbers=_LAYOUT,
                           feature_group_count=groups)
  return make(jax.lax.conv_general_dilated), make(
      conv_ops.conv_general_dilated)


@pytest.fixture(params=['convolution', 'patches'])
def path(request, monkeypatch):
  """Forces one of conv_ops' two paths for ungrouped convolutions."""
  monkeypatch.setattr(conv_ops, '_patches_are_faster',
                      lambda out_spatial: request.param == 'patches')
  return request.param


@pytest.mark.parametrize('case', _CASES, ids=[str(i) for i in range(len(_CASES))])
def test_gradients_equal_jax_to_second_order(case, path):
  """Also in float64, where both paths agree with JAX's rule to 1e-9 at
  second order (in float32 the patches path's curvature sums terms of size
  ~500 in another order and differs by 4e-4)."""
  height, k, stride, padding, dilation, groups, c_in, c_out = case
  reference, ours = _convs(stride, padding, dilation, groups)
  # float32, as the models run: values and first-order gradients to 1e-5,
  # and on the convolution path (one summation order) curvature to 1e-4.
  x = jax.random.normal(jax.random.key(0), (2, height, height + 1, c_in))
  w = jax.random.normal(jax.random.key(1), (k, k, c_in // groups, c_out))
  weights = jax.random.normal(jax.random.key(2), reference(x, w).shape)
  objective = lambda conv: lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * weights)
  np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-5,
                             atol=1e-5)
  for got, want in zip(jax.grad(objective(ours), (0, 1))(x, w),
                       jax.grad(objective(reference), (0, 1))(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if path == 'convolution':
    curvature = lambda conv: lambda w: jnp.sum(
        jax.grad(objective(conv))(x, w) ** 2)
    np.testing.assert_allclose(jax.grad(curvature(ours))(w),
                               jax.grad(curvature(reference))(w), rtol=1e-4,
                               atol=1e-4)

  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, height, height + 1, c_in))
    w = jax.random.normal(jax.random.key(1), (k, k, c_in // groups, c_out))
    weights = jax.random.normal(jax.random.key(2), reference(x, w).shape)
    assert x.dtype == w.dtype == jnp.float64

    def objective(conv):
      return lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * weights)

    def curvature(conv):  # a loss of the input gradient, as CAM losses are
      return lambda w: jnp.sum(jax.grad(objective(conv))(x, w) ** 2)

    close = functools.partial(np.testing.assert_allclose, rtol=1e-9,
                              atol=1e-9)
    close(ours(x, w), reference(x, w))
    for got, want in zip(jax.grad(objective(ours), (0, 1))(x, w),
                         jax.grad(objective(reference), (0, 1))(x, w)):
      close(got, want)
    close(jax.grad(curvature(ours))(w), jax.grad(curvature(reference))(w))


@pytest.mark.parametrize('case', [_CASES[1], _CASES[5], _CASES[9]],
                         ids=['stride2', 'same', 'grouped'])
def test_kernel_gradient_in_chunks_equals_jax_to_second_order(case):
  """19 examples: the kernel gradient sums chunks of 8, 8 and 3."""
  height, k, stride, padding, dilation, groups, c_in, c_out = case
  reference, ours = _convs(stride, padding, dilation, groups)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (19, height, height + 1, c_in))
    w = jax.random.normal(jax.random.key(1), (k, k, c_in // groups, c_out))
    weights = jax.random.normal(jax.random.key(2), reference(x, w).shape)
    objective = lambda conv: lambda w: jnp.sum(jnp.tanh(conv(x, w)) * weights)
    curvature = lambda conv: lambda w: jnp.sum(jax.grad(objective(conv))(w)
                                               ** 2)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-9,
                              atol=1e-9)
    close(jax.grad(objective(ours))(w), jax.grad(objective(reference))(w))
    close(jax.grad(curvature(ours))(w), jax.grad(curvature(reference))(w))


def test_kernel_gradient_runs_one_convolution_per_chunk():
  _, ours = _convs(1, ((1, 1), (1, 1)), 1, 1)
  w = jnp.ones((3, 3, 4, 6))

  def convolutions(batch):
    x = jnp.ones((batch, 8, 8, 4))
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(ours(x, w))))(w)
    return str(jaxpr).count('conv_general_dilated')

  assert conv_ops.KERNEL_GRADIENT_CHUNK == 8
  # Batch 8: forward, kernel gradient, input gradient; each 8 more examples
  # add one kernel-gradient convolution.
  assert convolutions(19) - convolutions(8) == 2
  assert convolutions(1) == convolutions(8)


def test_jit_and_vmap_match_jax(path):
  del path
  reference, ours = _convs(2, ((1, 1), (1, 1)), 1, 1)
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  loss = lambda conv: jax.jit(jax.vmap(jax.grad(
      lambda x: jnp.sum(jnp.sin(conv(x, w))))))
  np.testing.assert_allclose(loss(ours)(x), loss(reference)(x), rtol=1e-5,
                             atol=1e-5)


def test_other_layouts_fall_back_to_lax():
  x = jax.random.normal(jax.random.key(0), (2, 4, 8, 8))  # NCHW
  w = jax.random.normal(jax.random.key(1), (5, 4, 3, 3))  # OIHW
  args = ((1, 1), 'SAME')
  kwargs = dict(dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  grad = lambda fn: jax.grad(lambda x: jnp.sum(fn(x, w, *args, **kwargs) ** 2))
  np.testing.assert_array_equal(grad(conv_ops.conv_general_dilated)(x),
                                grad(jax.lax.conv_general_dilated)(x))


@pytest.mark.parametrize('batch, size, stride, patches', [
    (32, 4, 1, True),    # ResNet-18 stage 4
    (32, 8, 2, True),    # into stage 4
    (1, 4, 1, True),     # stage 4, one image
    (128, 4, 1, True),   # any batch: sharding must not change the path
    (32, 8, 1, False),   # stage 3
    (1, 8, 1, False),
    (1, 16, 1, False),   # stage 2, one image
    (1, 32, 1, False),
])
def test_small_output_maps_run_as_a_matrix_product(batch, size, stride,
                                                   patches):
  x = jnp.ones((batch, size, size, 8))
  w = jnp.ones((3, 3, 8, 4))
  conv = lambda x, w: conv_ops.conv_general_dilated(
      x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_LAYOUT)
  hlo = jax.jit(conv).lower(x, w).as_text()
  assert ('dot_general' in hlo) == patches
  assert ('convolution' in hlo) != patches
  np.testing.assert_allclose(
      conv(x, w), jax.lax.conv_general_dilated(
          x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_LAYOUT),
      rtol=1e-5)


@pytest.mark.parametrize('c_in, groups, c_out, kind', [
    (8, 8, 8, 'depthwise'), (8, 8, 16, 'depthwise'), (8, 2, 8, 'convolution'),
    (8, 1, 8, 'convolution')])
def test_depthwise_convolutions_run_as_a_sum_of_slices(c_in, groups, c_out,
                                                       kind):
  x = jnp.ones((2, 16, 16, c_in))
  w = jnp.ones((3, 3, c_in // groups, c_out))
  hlo = jax.jit(lambda x, w: conv_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=_LAYOUT,
      feature_group_count=groups)).lower(x, w).as_text()
  assert ('convolution' in hlo) == (kind == 'convolution')
  assert 'dot_general' not in hlo


class _TwoConvs(nn.Module):

  @nn.compact
  def __call__(self, x):
    for stride in (1, 1):
      x = nn.relu(nn.Conv(32, (3, 3), strides=stride, padding=((1, 1),) * 2,
                          conv_general_dilated=conv_ops.conv_general_dilated)(x))
    return jnp.sum(x)


def _library_fusions(fn, *args) -> int:
  """How many convolutions XLA:CPU compiled to YNNPACK custom fusions."""
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return len(re.findall(r'"kind":"__ynn_fusion"', hlo))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU only')
def test_input_gradient_in_a_loop_compiles_like_a_single_gradient():
  """The reason for the module: with JAX's rule, 2 of these 4 convolutions
  (the input gradients) leave the fast kernels inside the loop."""
  model = _TwoConvs()
  x = jnp.ones((8, 16, 16, 32))  # smaller stays off YNNPACK
  params = model.init(jax.random.key(0), x)
  grad = jax.grad(lambda x, p: model.apply(p, x))
  loop = lambda x, p: jax.lax.fori_loop(
      0, 2, lambda i, z: z + 0.01 * jnp.sign(grad(z, p)), x)
  single = _library_fusions(grad, x, params)
  assert _library_fusions(loop, x, params) == single == 4
