"""Independent float64 numpy references shared by the loss tests."""

import numpy as np


def softmax(z, axis=-1):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def bilinear(img, size):
  """PyTorch `F.interpolate(bilinear, align_corners=False)` on `[B, h, w]`
  (half-pixel centres, edge clamping, no antialiasing), up or down."""
  out = np.asarray(img, np.float64)
  for axis, new in ((1, size[0]), (2, size[1])):
    old = out.shape[axis]
    src = np.maximum((np.arange(new) + 0.5) * old / new - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), old - 1)
    i1 = np.minimum(i0 + 1, old - 1)
    frac = (src - i0).reshape([new if a == axis else 1 for a in range(3)])
    out = (np.take(out, i0, axis=axis) * (1 - frac)
           + np.take(out, i1, axis=axis) * frac)
  return out
