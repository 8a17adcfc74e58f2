r"""Differentiable class activation maps (CAM) and SmaraAD's alignment loss.

For a network whose head is global average pooling then a Dense layer with
kernel :math:`W \in \mathbb{R}^{K \times C}` (features × classes), the CAM of
class c on the last feature map :math:`A \in \mathbb{R}^{H \times W \times K}`
is (Zhou et al., CVPR 2016; SmaraAD Eq. 6)

.. math:: \mathrm{CAM}_c = \sum_k W_{k c} A_k .

Grad-CAM on that feature map weights channel k by the spatial mean of
∂logit_c/∂A_k = W_{kc}/(HW), so it is the same map up to the factor 1/(HW)
that the normalisation below removes (`seed_methods_facts.md` §1.3). The map
is then made comparable across networks as pytorch-grad-cam does: ReLU,
subtract the per-example minimum, divide by (maximum + 1e-7); and resized
bilinearly (half-pixel centres, like `F.interpolate(align_corners=False)`)
to the larger of the two map sizes: a 4×4 ResNet-18 student against an 8×8
WRN teacher is the normal case. The alignment loss (Eq. 7) is

.. math:: L_{align}(x) = \frac{1}{HW} \sum_{i,j}
   \big(G(\mathrm{CAM}_T(x))_{ij} - G(\mathrm{CAM}_S(x))_{ij}\big)^2

per example, with the teacher map under `stop_gradient`. Unlike
pytorch-grad-cam (NumPy, so no gradient), every step here is differentiable:
the student's gradient reaches both its features and its head kernel.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

NORM_EPS = 1e-7  # pytorch-grad-cam's `scale_cam_image`


def head_kernel(params: Mapping[str, Any], *, who: str = 'the model'
                ) -> jax.Array:
  """The `[K, C]` kernel of a registry CNN's Dense head (`params['head']`)."""
  head = params.get('head') if hasattr(params, 'get') else None
  if head is None or 'kernel' not in head:
    raise ValueError(
        f'CAM needs a global-average-pool → Dense head named "head"; '
        f'{who} has none (top-level params: {sorted(params)}). Use a registry '
        'CNN (resnet*, preact_resnet18, mobilenet_v2, wrn*).')
  return head['kernel']


def class_activation_map(features: jax.Array, kernel: jax.Array,
                         classes: jax.Array) -> jax.Array:
  """Raw CAMs `Σ_k W[k, c_b] A_b[..., k]`.

  Args:
    features: `[B, H, W, K]` last feature map (the input of the GAP).
    kernel: `[K, C]` Dense head kernel.
    classes: `[B]` int class per example.

  Returns:
    `[B, H, W]`.
  """
  if features.ndim != 4:
    raise ValueError('CAM needs a [B, H, W, K] feature map, got shape '
                     f'{features.shape}.')
  weights = jnp.take(kernel, classes, axis=1).T  # [B, K]
  return jnp.einsum('bhwk,bk->bhw', features, weights)


def normalize_cam(cam: jax.Array) -> jax.Array:
  """ReLU, then per example `(m − min m) / (max(m − min m) + 1e-7)`."""
  cam = jax.nn.relu(cam)
  cam = cam - jnp.min(cam, axis=(-2, -1), keepdims=True)
  return cam / (jnp.max(cam, axis=(-2, -1), keepdims=True) + NORM_EPS)


def resize_cam(cam: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize `[B, h, w] -> [B, *size]` (identity when equal).

  Half-pixel centres and no antialiasing, as PyTorch's
  `F.interpolate(mode='bilinear', align_corners=False)`, also when shrinking.
  """
  if tuple(cam.shape[-2:]) == tuple(size):
    return cam
  return jax.image.resize(cam, cam.shape[:-2] + tuple(size), 'bilinear',
                          antialias=False)


def normalized_cam(features: jax.Array, kernel: jax.Array,
                   classes: jax.Array) -> jax.Array:
  """`normalize_cam(class_activation_map(...))`, `[B, H, W]` in [0, 1)."""
  return normalize_cam(class_activation_map(features, kernel, classes))


def cam_alignment(student_cam: jax.Array, teacher_cam: jax.Array, *,
                  stop_teacher: bool = True) -> jax.Array:
  """SmaraAD's L_align per example (Eq. 7), `[B, h, w] × [B, H, W] -> [B]`.

  Both maps must already be normalised (`normalized_cam`); each is resized
  to the larger height and width, and the squared difference is averaged
  over pixels.
  """
  if stop_teacher:
    teacher_cam = jax.lax.stop_gradient(teacher_cam)
  size = (max(student_cam.shape[-2], teacher_cam.shape[-2]),
          max(student_cam.shape[-1], teacher_cam.shape[-1]))
  diff = resize_cam(teacher_cam, size) - resize_cam(student_cam, size)
  return jnp.mean(diff ** 2, axis=(-2, -1))
