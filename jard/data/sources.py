"""Image-classification sources, loaded into uint8 host arrays and validated.

A source is named by a spec string (`config.dataset.train` / `.test`):

* `tfds:<name>[:<split>]`: read with `tfds.data_source` (ArrayRecord, no
  TensorFlow needed). The split defaults to the role (`train` or `test`).
  `tfds:cifar10` and `tfds:cifar100` are the supported names.
* `npz:<path>`: a NumPy archive with arrays `image` uint8 `[N, H, W, C]` and
  `label` int `[N]` (read with `allow_pickle=False`).
* `folder:<root>`: one subfolder per class (sorted names = class ids), image
  files inside (PNG/JPEG, read with Pillow through matplotlib's dependency).
* `amc_synthetic[:per_key=N,seed=S,am_ssb=correct|faithful]`: the offline
  RadioML-2016.10A look-alike (`amc_synthetic.py`), generated once and cached
  under the run's data directory; 50/50 split stratified by (modulation, SNR).
* `radioml:<path>`: the real `RML2016.10a_dict.pkl` (`radioml.py`, restricted
  unpickler), with the same seeded stratified split.

Radio sources hold float32 I/Q signals `[N, 2, 128]` (not images) and the
per-example SNR labels in `extras['snr']`.

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
    images: the inputs: uint8 images `[N, H, W, C]`, or float32 radio
      signals `[N, 2, L]` (radio sources).
    labels: int32 `[N]`, in `[0, num_classes)`.
    num_classes: K.
    name: the spec it was loaded from.
    extras: further per-example arrays `[N, ...]` that batches carry along
      (radio: `snr`, int32 dB labels).
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  extras: dict = dataclasses.field(default_factory=dict)

  def __len__(self):
    return len(self.labels)

  @property
  def is_signal(self) -> bool:
    """True for float radio signals (unbounded, no image augmentation)."""
    return self.images.dtype != np.uint8

  @property
  def bounds(self):
    """The input range attacks must respect: [0, 1] images, none for signals."""
    return None if self.is_signal else (0.0, 1.0)

  def subset(self, indices: np.ndarray, name_suffix: str) -> 'ImageDataset':
    return ImageDataset(self.images[indices], self.labels[indices],
                        self.num_classes, self.name + name_suffix,
                        {k: v[indices] for k, v in self.extras.items()})


def parse_spec(spec: str, field: str) -> tuple[str, str]:
  """Splits `kind:rest`, raising a DataError that names `field`."""
  kind, sep, rest = spec.partition(':')
  if kind == 'amc_synthetic':
    return kind, rest
  if not sep or kind not in ('tfds', 'npz', 'folder', 'radioml') or not rest:
    raise DataError(
        f'{field}={spec!r} is not a data source; use tfds:cifar10, '
        'tfds:cifar100, npz:<path>, folder:<root>, amc_synthetic[:per_key=N]'
        ' or radioml:<path>.')
  return kind, rest


RADIO_KINDS = ('amc_synthetic', 'radioml')


def is_radio_spec(spec: str) -> bool:
  """Whether a source spec names radio signals (not images)."""
  return spec.partition(':')[0] in RADIO_KINDS


def is_radio_config(dataset_config) -> bool:
  """Whether `config.dataset` trains on radio signals (`source` or `train`)."""
  return is_radio_spec(dataset_config.source or dataset_config.train)


SYNTHETIC_OPTIONS = {'per_key': int, 'seed': int, 'am_ssb': str}


def _synthetic_options(rest: str, field: str) -> dict:
  """`'per_key=100,seed=1'` -> {'per_key': 100, 'seed': 1} (checked)."""
  options = {'per_key': 1000, 'seed': 0, 'am_ssb': 'correct'}
  for part in filter(None, (p.strip() for p in rest.split(','))):
    key, sep, value = part.partition('=')
    if not sep or key not in SYNTHETIC_OPTIONS:
      raise DataError(f'{field}: bad amc_synthetic option {part!r}; use '
                      f'key=value with keys {sorted(SYNTHETIC_OPTIONS)}.')
    try:
      options[key] = SYNTHETIC_OPTIONS[key](value)
    except ValueError:
      raise DataError(f'{field}: amc_synthetic option {key}={value!r} is not '
                      f'a {SYNTHETIC_OPTIONS[key].__name__}.') from None
  if options['per_key'] < 2:
    raise DataError(f'{field}: amc_synthetic per_key={options["per_key"]} '
                    'must be >= 2 (half of each key goes to the test set).')
  if options['am_ssb'] not in ('correct', 'faithful'):
    raise DataError(f'{field}: amc_synthetic am_ssb={options["am_ssb"]!r}; '
                    'use correct or faithful.')
  return options


def _load_radio(kind: str, rest: str, role: str, field: str,
                cache_dir: str):
  """(signals, labels, snrs) of the `role` half of a radio source."""
  # pylint: disable=g-import-not-at-top
  if kind == 'radioml':
    from jard.data import radioml
    return radioml.load(rest, role=role, seed=0, field=field)
  from jard.data import amc_synthetic
  options = _synthetic_options(rest, field)
  signals, labels, snrs = amc_synthetic.cached_generate(
      cache_dir, options['per_key'], options['seed'],
      am_ssb=options['am_ssb'])
  train_idx, test_idx = amc_synthetic.stratified_split(
      labels, snrs, seed=options['seed'])
  idx = train_idx if role == 'train' else test_idx
  return signals[idx], labels[idx], snrs[idx]


def validate_signals(signals, labels, snrs, *, num_classes: int,
                     field: str) -> None:
  """Checks radio arrays: float32 `[N, 2, L]`, finite, labels and SNRs."""
  if signals.ndim != 3 or signals.shape[1] != 2 or not len(signals):
    raise DataError(f'{field}: radio signals must be a non-empty [N, 2, L] '
                    f'I/Q array, got shape {signals.shape}.')
  if signals.dtype != np.float32 or not np.all(np.isfinite(signals)):
    raise DataError(f'{field}: radio signals must be finite float32 '
                    f'(got {signals.dtype}).')
  if labels.shape != (len(signals),) or snrs.shape != labels.shape:
    raise DataError(f'{field}: labels {labels.shape} and SNRs {snrs.shape} '
                    f'must both be [N] for {len(signals)} signals.')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(
        f'{field}: labels span [{labels.min()}, {labels.max()}] but config.'
        f'dataset.num_classes={num_classes}; RadioML 2016.10A has 11 classes.')


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
         field: str, cache_dir: str = '.') -> ImageDataset:
  """Loads and validates a source.

  Args:
    spec: source spec (see module docstring).
    role: `'train'` or `'test'` (the default TFDS split).
    num_classes: the configured class count, checked against the source.
    image_size: expected H = W.
    field: config field name used in error messages.
    cache_dir: where generated (synthetic) data are cached.

  Returns:
    The validated `ImageDataset`.
  """
  kind, rest = parse_spec(spec, field)
  if kind in ('amc_synthetic', 'radioml'):
    signals, labels, snrs = _load_radio(kind, rest, role, field, cache_dir)
    validate_signals(signals, labels, snrs, num_classes=num_classes,
                     field=field)
    logging.info('Loaded %s (%s half): %d signals.', spec, role, len(labels))
    return ImageDataset(np.ascontiguousarray(signals, np.float32),
                        labels.astype(np.int32), num_classes, spec,
                        {'snr': snrs.astype(np.int32)})
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
