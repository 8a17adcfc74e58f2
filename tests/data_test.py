"""Tests for `jard.data`: sources, their validation, batching and augmentation.

Every bad input must raise `DataError` naming the config field and the fix;
batching must be a pure function of `(seed, step)`; augmentation is checked
against a NumPy reconstruction of pad-and-crop plus flip.
"""

import itertools
import os
import pickle

import jax
import numpy as np
from PIL import Image
import pytest

from jard import data

FIELD = 'config.dataset.train'
_UNPICKLED = []


def _load(spec, num_classes=10, image_size=32, role='train'):
  return data.load(spec, role=role, num_classes=num_classes,
                   image_size=image_size, field=FIELD)


def _save_npz(path, **arrays):
  np.savez(path, **arrays)
  return f'npz:{path}'


def _random_images(n, size=32, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


# ----------------------------------------------------------------- npz


def test_npz_loads_and_labels_become_int32(tmp_path):
  images = _random_images(6)
  labels = np.array([0, 9, 3, 3, 1, 2], dtype=np.int64)
  ds = _load(_save_npz(tmp_path / 'd.npz', image=images, label=labels))
  assert isinstance(ds, data.ImageDataset)
  assert len(ds) == 6 and ds.num_classes == 10
  assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 32, 32, 3)
  np.testing.assert_array_equal(ds.images, images)
  assert ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.labels, labels)


def test_npz_unsigned_labels_and_grayscale(tmp_path):
  images = _random_images(4, channels=1)
  labels = np.array([0, 1, 2, 1], dtype=np.uint8)
  ds = _load(_save_npz(tmp_path / 'g.npz', image=images, label=labels),
             num_classes=3)
  assert ds.labels.dtype == np.int32
  assert ds.images.shape == (4, 32, 32, 3)
  for c in range(3):
    np.testing.assert_array_equal(ds.images[..., c], images[..., 0])


def _bad_npz_message(tmp_path, **arrays):
  spec = _save_npz(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(data.DataError) as info:
    _load(spec)
  message = str(info.value)
  assert FIELD in message, message
  return message


def test_npz_nchw_is_refused(tmp_path):
  images = np.transpose(_random_images(4), (0, 3, 1, 2))  # [N, 3, 32, 32]
  message = _bad_npz_message(tmp_path, image=images,
                             label=np.zeros(4, np.int64))
  assert 'NHWC' in message and 'transpose' in message


def test_npz_float_images_are_refused(tmp_path):
  images = _random_images(4).astype(np.float32) / 255
  message = _bad_npz_message(tmp_path, image=images,
                             label=np.zeros(4, np.int64))
  assert 'float32' in message and 'uint8' in message


def test_npz_labels_out_of_range(tmp_path):
  for bad in (10, -1):
    labels = np.array([0, 1, bad, 2], np.int64)
    message = _bad_npz_message(tmp_path, image=_random_images(4), label=labels)
    assert 'config.dataset.num_classes' in message
    assert '[0, 9]' in message


def test_npz_label_count_mismatch(tmp_path):
  message = _bad_npz_message(tmp_path, image=_random_images(4),
                             label=np.zeros(3, np.int64))
  assert 'labels' in message and 'matching 4 images' in message


def test_npz_float_labels_are_refused(tmp_path):
  message = _bad_npz_message(tmp_path, image=_random_images(4),
                             label=np.zeros(4, np.float32))
  assert 'integers' in message


def test_npz_missing_path(tmp_path):
  with pytest.raises(data.DataError) as info:
    _load(f'npz:{tmp_path}/nope.npz')
  message = str(info.value)
  assert FIELD in message and 'does not exist' in message
  assert 'fix the path' in message


def test_npz_missing_label_array(tmp_path):
  message = _bad_npz_message(tmp_path, image=_random_images(4))
  assert "['label']" in message


def test_npz_corrupt_file(tmp_path):
  path = tmp_path / 'corrupt.npz'
  path.write_bytes(b'this is not a zip archive' * 10)
  with pytest.raises(data.DataError) as info:
    _load(f'npz:{path}')
  assert FIELD in str(info.value) and 'cannot read' in str(info.value)
  # A truncated real archive as well.
  good = tmp_path / 'good.npz'
  np.savez(good, image=_random_images(4), label=np.zeros(4, np.int64))
  path.write_bytes(good.read_bytes()[:200])
  with pytest.raises(data.DataError) as info:
    _load(f'npz:{path}')
  assert FIELD in str(info.value)


def _record_unpickle():
  _UNPICKLED.append(True)
  return 'unpickled'


class _Sentinel:
  """Records it if it is ever unpickled."""

  def __reduce__(self):
    return (_record_unpickle, ())


def test_npz_object_arrays_are_never_unpickled(tmp_path):
  # The sentinel does record unpickling (so the check below is meaningful).
  pickle.loads(pickle.dumps(_Sentinel()))
  assert _UNPICKLED == [True]
  _UNPICKLED.clear()
  labels = np.empty(4, dtype=object)
  labels[:] = [_Sentinel() for _ in range(4)]
  path = tmp_path / 'obj.npz'
  np.savez(path, image=_random_images(4), label=labels)
  with pytest.raises(data.DataError) as info:
    _load(f'npz:{path}')
  assert FIELD in str(info.value)
  assert not _UNPICKLED
  # An object array of images too.
  images = np.empty(4, dtype=object)
  images[:] = [_Sentinel() for _ in range(4)]
  np.savez(path, image=images, label=np.zeros(4, np.int64))
  with pytest.raises(data.DataError):
    _load(f'npz:{path}')
  assert not _UNPICKLED


def test_bad_spec():
  for spec in ('cifar10', 'http:foo', 'npz:', 'tfds'):
    with pytest.raises(data.DataError) as info:
      _load(spec)
    assert FIELD in str(info.value) and 'npz:<path>' in str(info.value)


# -------------------------------------------------------------- folder


def _write_png(path, array):
  Image.fromarray(array).save(path)


def _make_folder(root, counts, size=8):
  rng = np.random.default_rng(1)
  written = {}
  for name, count in counts.items():
    os.makedirs(root / name)
    for i in range(count):
      image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      _write_png(root / name / f'{i:02d}.png', image)
      written[(name, i)] = image
  return written


def test_folder_loads_with_sorted_class_labels(tmp_path):
  # Created in non-sorted order; labels must follow the sorted names.
  written = _make_folder(tmp_path, {'dog': 3, 'cat': 2})
  (tmp_path / 'dog' / 'notes.txt').write_text('not an image')
  ds = data.load(f'folder:{tmp_path}', role='train', num_classes=2,
                 image_size=8, field=FIELD)
  assert len(ds) == 5 and ds.num_classes == 2
  assert ds.images.dtype == np.uint8 and ds.images.shape == (5, 8, 8, 3)
  assert ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])  # cat=0, dog=1
  expected = [written[('cat', i)] for i in range(2)] + [
      written[('dog', i)] for i in range(3)]
  np.testing.assert_array_equal(ds.images, np.stack(expected))


def test_folder_class_count_mismatch(tmp_path):
  _make_folder(tmp_path, {'cat': 1, 'dog': 1})
  with pytest.raises(data.DataError) as info:
    data.load(f'folder:{tmp_path}', role='train', num_classes=10,
              image_size=8, field=FIELD)
  assert FIELD in str(info.value)
  assert 'config.dataset.num_classes=2' in str(info.value)


def test_folder_bad_image_file(tmp_path):
  _make_folder(tmp_path, {'cat': 1, 'dog': 1})
  (tmp_path / 'dog' / 'broken.png').write_bytes(b'\x89PNG garbage')
  with pytest.raises(data.DataError) as info:
    data.load(f'folder:{tmp_path}', role='train', num_classes=2,
              image_size=8, field=FIELD)
  assert FIELD in str(info.value) and 'broken.png' in str(info.value)


def test_folder_missing_root(tmp_path):
  with pytest.raises(data.DataError) as info:
    data.load(f'folder:{tmp_path}/missing', role='train', num_classes=2,
              image_size=8, field=FIELD)
  assert FIELD in str(info.value) and 'does not exist' in str(info.value)


def test_folder_without_class_dirs(tmp_path):
  with pytest.raises(data.DataError) as info:
    data.load(f'folder:{tmp_path}', role='train', num_classes=2,
              image_size=8, field=FIELD)
  assert FIELD in str(info.value) and 'class' in str(info.value)


# ---------------------------------------------------------------- tfds


def test_tfds_cifar10_mock():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=6):
    ds = _load('tfds:cifar10', role='train')
    test_ds = data.load('tfds:cifar10:test', role='train', num_classes=10,
                        image_size=32, field='config.dataset.test')
  assert ds.images.dtype == np.uint8 and ds.images.shape == (6, 32, 32, 3)
  assert ds.labels.dtype == np.int32 and ds.labels.shape == (6,)
  assert ds.num_classes == 10
  assert ds.labels.min() >= 0 and ds.labels.max() < 10
  assert test_ds.images.shape == (6, 32, 32, 3)


def test_tfds_cifar100_needs_num_classes_100():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=3):
    with pytest.raises(data.DataError) as info:
      _load('tfds:cifar100', num_classes=10)
  assert FIELD in str(info.value)
  assert 'num_classes=100' in str(info.value)


def test_tfds_unsupported_name():
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(data.DataError) as info:
    _load('tfds:mnist')
  assert FIELD in str(info.value) and "'mnist'" in str(info.value)
  assert 'cifar10' in str(info.value)


# -------------------------------------------------------------- batching


def _index_dataset(n):
  """Image i is filled with i; label i is i (so a batch names its rows)."""
  images = np.broadcast_to(
      np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 2, 2, 3)).copy()
  return data.ImageDataset(images, np.arange(n, dtype=np.int32), n, 'index')


def _take(iterator, count):
  return [b['label'] for b in itertools.islice(iterator, count)]


N, B = 23, 4
S = N // B  # 5 steps per epoch, 3 examples dropped.


def test_train_batches_deterministic_in_seed():
  ds = _index_dataset(N)
  first = _take(data.train_batches(ds, global_batch=B, seed=7), 3 * S)
  again = _take(data.train_batches(ds, global_batch=B, seed=7), 3 * S)
  other = _take(data.train_batches(ds, global_batch=B, seed=8), 3 * S)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  batch = next(data.train_batches(ds, global_batch=B, seed=7))
  assert batch['image'].shape == (B, 2, 2, 3)
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'])
  assert data.steps_per_epoch(N, B) == S


def test_train_batches_epochs():
  ds = _index_dataset(N)
  labels = _take(data.train_batches(ds, global_batch=B, seed=3), 4 * S)
  epochs = [np.concatenate(labels[e * S:(e + 1) * S]) for e in range(4)]
  for e, seen in enumerate(epochs):
    assert len(seen) == S * B
    assert len(np.unique(seen)) == S * B, f'epoch {e} repeats an example'
    assert seen.min() >= 0 and seen.max() < N
    np.testing.assert_array_equal(
        seen, data.epoch_permutation(N, 3, e)[:S * B])
  for a, b in itertools.combinations(range(4), 2):
    assert not np.array_equal(epochs[a], epochs[b])


def test_train_batches_resume_matches_uninterrupted():
  ds = _index_dataset(N)
  full = _take(data.train_batches(ds, global_batch=B, seed=5), 4 * S)
  for k in range(0, 3 * S + 1):  # includes every epoch boundary
    resumed = _take(
        data.train_batches(ds, global_batch=B, seed=5, start_step=k), S)
    np.testing.assert_array_equal(np.stack(resumed), np.stack(full[k:k + S]),
                                  err_msg=f'start_step={k}')


def test_train_batches_process_slices():
  ds = _index_dataset(N)
  single = _take(data.train_batches(ds, global_batch=B, seed=2), 2 * S + 1)
  parts = [_take(data.train_batches(ds, global_batch=B, seed=2,
                                    process_index=p, process_count=2),
                 2 * S + 1) for p in range(2)]
  for step, batch in enumerate(single):
    assert parts[0][step].shape == (B // 2,)
    np.testing.assert_array_equal(
        np.concatenate([parts[0][step], parts[1][step]]), batch)
  # Resuming a process also matches.
  resumed = _take(data.train_batches(ds, global_batch=B, seed=2, start_step=S,
                                     process_index=1, process_count=2), 2)
  np.testing.assert_array_equal(np.stack(resumed), np.stack(parts[1][S:S + 2]))


def test_train_batches_bad_sizes():
  ds = _index_dataset(N)
  with pytest.raises(ValueError, match='config.batch_size'):
    next(data.train_batches(ds, global_batch=N + 1, seed=0))
  with pytest.raises(ValueError, match='config.batch_size'):
    next(data.train_batches(ds, global_batch=B, seed=0, process_count=3))


def test_eval_batches_visit_every_example_once():
  ds = _index_dataset(N)
  batches = list(data.eval_batches(ds, global_batch=8))
  assert len(batches) == 3
  for b in batches:
    assert b['image'].shape == (8, 2, 2, 3) and b['mask'].shape == (8,)
    assert b['mask'].dtype == np.float32 and b['index'].dtype == np.int32
    np.testing.assert_array_equal(b['label'], b['index'])
  mask = np.concatenate([b['mask'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * N + [0])  # one pad, at the end
  np.testing.assert_array_equal(index[mask == 1], np.arange(N))
  assert 0 <= index[-1] < N


def test_eval_batches_num_examples():
  ds = _index_dataset(N)
  batches = list(data.eval_batches(ds, global_batch=8, num_examples=10))
  assert len(batches) == 2
  mask = np.concatenate([b['mask'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 6)
  # A fixed, sorted random subset (not the first rows: test files are often
  # sorted by class), without repeats, the same on every call.
  np.testing.assert_array_equal(index[:10], data.eval_indices(N, 10))
  assert len(set(index[:10])) == 10 and np.all(np.diff(index[:10]) > 0)
  assert not np.array_equal(index[:10], np.arange(10))
  # More than the dataset holds: all of it; exactly a batch multiple: no pad.
  many = list(data.eval_batches(ds, global_batch=8, num_examples=1000))
  assert sum(b['mask'].sum() for b in many) == N
  exact = list(data.eval_batches(ds, global_batch=8, num_examples=16))
  assert len(exact) == 2 and all(b['mask'].all() for b in exact)


def test_eval_subset_of_class_sorted_data_covers_every_class():
  labels = np.repeat(np.arange(10), 1000)  # CIFAR-10 test.npz is sorted
  subset = labels[data.eval_indices(len(labels), 1000)]
  counts = np.bincount(subset, minlength=10)
  assert counts.min() > 50, counts


def test_eval_batches_process_slices():
  ds = _index_dataset(N)
  single = list(data.eval_batches(ds, global_batch=8, num_examples=20))
  parts = [list(data.eval_batches(ds, global_batch=8, num_examples=20,
                                  process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(single)
  for step, batch in enumerate(single):
    for key in ('image', 'label', 'mask', 'index'):
      assert parts[0][step][key].shape[0] == 4
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]),
          batch[key])


# ------------------------------------------------------------- augment

_augment = jax.jit(data.augment, static_argnames='padding')


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _match_window(out_uint8, image, padding):
  """The (dy, dx, flip) whose window of the padded image gives `out`."""
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  found = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      window = padded[dy:dy + h, dx:dx + w]
      for flip in (False, True):
        if np.array_equal(out_uint8, window[:, ::-1] if flip else window):
          found.append((dy, dx, flip))
  return found


def test_augment_is_a_crop_of_the_padded_image_and_a_flip():
  n, padding = 256, 4
  # Pixel values in [1, 255] so zero padding is distinguishable from image.
  images = np.random.default_rng(0).integers(1, 256, (n, 8, 8, 3),
                                             dtype=np.uint8)
  out = np.asarray(_augment(images, _keys(n), padding=padding))
  assert out.dtype == np.float32 and out.shape == images.shape
  assert out.min() >= 0 and out.max() <= 1
  as_uint8 = np.round(out * 255).astype(np.uint8)
  np.testing.assert_allclose(out * 255, as_uint8, atol=1e-3)
  offsets, flips = set(), set()
  for i in range(n):
    found = _match_window(as_uint8[i], images[i], padding)
    assert len(found) == 1, (i, found)
    dy, dx, flip = found[0]
    offsets.update((('y', dy), ('x', dx)))
    flips.add(flip)
  assert flips == {False, True}
  expected = {(axis, o) for axis in 'yx' for o in range(2 * padding + 1)}
  assert offsets == expected


def test_augment_without_padding_is_identity_or_flip():
  n = 32
  images = np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3),
                                             dtype=np.uint8)
  out = np.asarray(_augment(images, _keys(n, 1), padding=0))
  assert out.dtype == np.float32 and out.shape == images.shape
  expected = images.astype(np.float32) / 255
  # Compiled, x / 255 may become x * (1 / 255): equal to within an ulp.
  def close(a, b):
    return np.allclose(a, b, rtol=0, atol=1e-6)
  identity = [close(out[i], expected[i]) for i in range(n)]
  flipped = [close(out[i], expected[i][:, ::-1]) for i in range(n)]
  assert all(a or b for a, b in zip(identity, flipped))
  assert any(identity) and any(flipped)
  # Float input in [0, 1] is used as is.
  out_f = np.asarray(_augment(expected, _keys(n, 1), padding=0))
  np.testing.assert_allclose(out_f, out, rtol=0, atol=1e-6)


def test_augment_per_example_keys_do_not_depend_on_the_batch():
  n = 16
  images = np.random.default_rng(2).integers(0, 256, (n, 8, 8, 3),
                                             dtype=np.uint8)
  keys = _keys(n, 2)
  out = np.asarray(_augment(images, keys))
  perm = np.random.default_rng(3).permutation(n)
  out_perm = np.asarray(_augment(images[perm], keys[perm]))
  np.testing.assert_array_equal(out_perm, out[perm])
  # The same key on the same image inside a different batch.
  others = np.random.default_rng(4).integers(0, 256, (n, 8, 8, 3),
                                             dtype=np.uint8)
  others[5] = images[0]
  other_keys = _keys(n, 9).at[5].set(keys[0])
  out_other = np.asarray(_augment(others, other_keys))
  np.testing.assert_array_equal(out_other[5], out[0])
  # A different key (almost surely) gives a different augmentation somewhere.
  out_new = np.asarray(_augment(images, _keys(n, 10)))
  assert not np.array_equal(out_new, out)


def test_to_float():
  images = np.array([[[[0, 255, 51]]]], np.uint8)
  out = np.asarray(data.to_float(images))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[[0, 1, 0.2]]]])
