"""Image-classification sources, loaded into uint8 host arrays and validated.

A source is named by a spec string (`config.dataset.train` / `.test`):

* `tfds:<name>[:<split>]`: read with `tfds.data_source` (ArrayRecord, no
  TensorFlow needed). The split defaults to the role (`train` or `test`).
  `tfds:cifar10` and `tfds:cifar100` are the supported names.
* `npz:<path>`: a NumPy archive with arrays `image` uint8 `[N, H, W, C]` and
  `label` int `[N]` (read with `allow_pickle=False`).
* `folder:<root>`: one subfolder per class (sorted names = class ids), image
  files inside (PNG/JPEG, read with Pillow through matplotlib's dependency).

Every source is checked by `validate` before any compilation: shape, dtype,
value range, label range and class count, with errors that name the config
field and the fix.
"""

import dataclasses
import os

from absl import logging
import numpy as np

TFDS_NAMES = {'cifar10': 10, 'cifar100': 100}
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


class DataError(ValueError):
  """Bad dataset input; the message names the config field and the fix."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """A dataset held in host memory.

  Attributes:
    images: uint8 `[N, H, W, C]`.
    labels: int32 `[N]`, in `[0, num_classes)`.
    num_classes: K.
    name: the spec it was loaded from.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __len__(self):
    return len(self.labels)

  def subset(self, indices: np.ndarray, name_suffix: str) -> 'ImageDataset':
    return ImageDataset(self.images[indices], self.labels[indices],
                        self.num_classes, self.name + name_suffix)


def parse_spec(spec: str, field: str) -> tuple[str, str]:
  """Splits `kind:rest`, raising a DataError that names `field`."""
  kind, sep, rest = spec.partition(':')
  if not sep or kind not in ('tfds', 'npz', 'folder') or not rest:
    raise DataError(
        f'{field}={spec!r} is not a data source; use tfds:cifar10, '
        'tfds:cifar100, npz:<path> or folder:<root>.')
  return kind, rest


def _load_tfds(rest: str, role: str, field: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, split = rest.partition(':')
  split = split or role
  if name not in TFDS_NAMES:
    raise DataError(f'{field}: unsupported TFDS dataset {name!r}; use one of '
                    f'{sorted(TFDS_NAMES)} or an npz:/folder: source.')
  try:
    source = tfds.data_source(name, split=split)
  except Exception as e:  # TFDS raises many types for a missing dataset.
    raise DataError(
        f'{field}: could not open tfds:{name} split {split!r} ({e}). Prepare '
        'it once with `tfds build` on a machine with internet, set TFDS_DATA_DIR,'
        ' or point the field at an npz:<path> copy.') from e
  images, labels = [], []
  for i in range(len(source)):
    example = source[i]
    images.append(np.asarray(example['image']))
    labels.append(int(example['label']))
  return np.stack(images), np.asarray(labels), TFDS_NAMES[name]


def _load_npz(path: str, field: str):
  if not os.path.isfile(path):
    raise DataError(f'{field}: npz file {path!r} does not exist; fix the path.')
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = {'image', 'label'} - set(archive.files)
      if missing:
        raise DataError(f'{field}: {path!r} lacks arrays {sorted(missing)}; an '
                        'npz source needs `image` [N,H,W,C] uint8 and `label` '
                        f'[N] int (found {archive.files}).')
      return archive['image'], archive['label'], None
  except DataError:
    raise
  except Exception as e:  # zip errors, object arrays refused, truncation.
    raise DataError(f'{field}: cannot read {path!r} as an npz archive of plain'
                    f' arrays ({type(e).__name__}: {e}).') from e


def _load_folder(root: str, field: str):
  if not os.path.isdir(root):
    raise DataError(f'{field}: folder {root!r} does not exist; fix the path.')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise DataError(f'{field}: {root!r} has no class subfolders; expected '
                    '<root>/<class_name>/<image files>.')
  images, labels = [], []
  for label, name in enumerate(classes):
    for file in sorted(os.listdir(os.path.join(root, name))):
      if file.lower().endswith(IMAGE_SUFFIXES):
        path = os.path.join(root, name, file)
        try:
          with Image.open(path) as im:
            images.append(np.asarray(im.convert('RGB'), dtype=np.uint8))
        except Exception as e:
          raise DataError(f'{field}: cannot decode image {path!r} ({e}).') from e
        labels.append(label)
  if not images:
    raise DataError(f'{field}: no image files under {root!r}.')
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise DataError(f'{field}: images under {root!r} have different shapes '
                    f'{sorted(shapes)}; resize them to one size first.')
  return np.stack(images), np.asarray(labels), len(classes)


def validate(images, labels, *, num_classes: int, image_size: int,
             field: str) -> None:
  """Checks shape, dtype, value range and labels; raises DataError."""
  if not isinstance(images, np.ndarray) or images.ndim != 4:
    raise DataError(f'{field}: images must be a [N, H, W, C] array, got shape '
                    f'{getattr(images, "shape", None)}.')
  n, h, w, c = images.shape
  if (h, w) != (image_size, image_size) or c not in (1, 3):
    raise DataError(
        f'{field}: images have shape [N, {h}, {w}, {c}] but config.dataset.'
        f'image_size={image_size} expects [N, {image_size}, {image_size}, 3] '
        '(NHWC; transpose NCHW data first).')
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.number):
      raise DataError(f'{field}: images have dtype {images.dtype}; need uint8.')
    lo, hi = (images.min(), images.max()) if n else (0, 0)
    raise DataError(
        f'{field}: images have dtype {images.dtype} (range [{lo}, {hi}]); '
        'store uint8 pixels in [0, 255] (e.g. np.round(x * 255).astype(uint8)).')
  if labels.ndim != 1 or len(labels) != n:
    raise DataError(f'{field}: labels must be a [N] vector matching {n} images,'
                    f' got shape {labels.shape}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{field}: labels have dtype {labels.dtype}; need integers.')
  if n == 0:
    raise DataError(f'{field}: the dataset is empty.')
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise DataError(
        f'{field}: labels span [{lo}, {hi}] but config.dataset.num_classes='
        f'{num_classes}; labels must lie in [0, {num_classes - 1}] (fix the '
        'labels or set config.dataset.num_classes).')


def load(spec: str, *, role: str, num_classes: int, image_size: int,
         field: str) -> ImageDataset:
  """Loads and validates a source.

  Args:
    spec: source spec (see module docstring).
    role: `'train'` or `'test'` (the default TFDS split).
    num_classes: the configured class count, checked against the source.
    image_size: expected H = W.
    field: config field name used in error messages.

  Returns:
    The validated `ImageDataset`.
  """
  kind, rest = parse_spec(spec, field)
  if kind == 'tfds':
    images, labels, source_classes = _load_tfds(rest, role, field)
  elif kind == 'npz':
    images, labels, source_classes = _load_npz(rest, field)
  else:
    images, labels, source_classes = _load_folder(rest, field)
  if source_classes is not None and source_classes != num_classes:
    raise DataError(
        f'{field}: {spec} has {source_classes} classes but config.dataset.'
        f'num_classes={num_classes}; set --config.dataset.num_classes='
        f'{source_classes}.')
  validate(images, labels, num_classes=num_classes, image_size=image_size,
           field=field)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  logging.info('Loaded %s: %d examples, %d classes.', spec, len(labels),
               num_classes)
  return ImageDataset(np.ascontiguousarray(images),
                      labels.astype(np.int32), num_classes, spec)
