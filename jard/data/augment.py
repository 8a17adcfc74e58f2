"""On-device augmentation, run inside the compiled step.

Pad-4 random crop (zero padding) and horizontal flip, as torchvision's
`RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`, drawn per example from
per-example keys so the result does not depend on the device layout.
"""

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float inputs (signals) pass through."""
  if images.dtype != jnp.uint8:
    return images.astype(jnp.float32)
  return images.astype(jnp.float32) / 255.0


def crop_and_flip(image: jax.Array, key: jax.Array, *,
                  padding: int = 4) -> jax.Array:
  """One `[H, W, C]` image: random crop of the zero-padded image, then flip."""
  crop_key, flip_key = jax.random.split(key)
  h, w, _ = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
  cropped = jax.lax.dynamic_slice(
      padded, (offsets[0], offsets[1], 0), (h, w, image.shape[-1]))
  flip = jax.random.bernoulli(flip_key)
  return jnp.where(flip, cropped[:, ::-1], cropped)


def augment(images: jax.Array, keys: jax.Array, *,
            padding: int = 4) -> jax.Array:
  """Augments a batch.

  Args:
    images: `[B, H, W, C]` uint8 or float in [0, 1].
    keys: `[B]` per-example PRNG keys.
    padding: crop padding in pixels (0 disables the crop).

  Returns:
    float32 `[B, H, W, C]` in [0, 1].
  """
  if images.dtype == jnp.uint8:
    images = to_float(images)
  return jax.vmap(lambda im, k: crop_and_flip(im, k, padding=padding))(
      images, keys)
