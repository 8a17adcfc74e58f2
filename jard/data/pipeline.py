"""Host-side batching: deterministic shuffles, process slicing, padded eval.

Training batches are a pure function of `(seed, step)`: epoch `e` uses the
permutation `default_rng([seed, e])`, and step `s` reads rows
`[(s mod S)·B, (s mod S + 1)·B)` of it, with `S = N // B` steps per epoch (the
remainder is dropped, as PyTorch's `drop_last`). A resumed run therefore sees
exactly the batches an uninterrupted run would.

With several processes, each takes its contiguous slice of every global
batch; `parallel.shard_batch` then splits that slice over local devices.
"""

from typing import Iterator

import numpy as np

from jard.data.sources import ImageDataset

Batch = dict[str, np.ndarray]


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  return num_examples // global_batch


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The shuffle of epoch `epoch`, derived only from the seed and the epoch."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _process_slice(global_batch: int, process_index: int,
                   process_count: int) -> slice:
  if global_batch % process_count:
    raise ValueError(f'config.batch_size={global_batch} must be divisible by '
                     f'the process count {process_count}.')
  per_process = global_batch // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


def train_batches(ds: ImageDataset, *, global_batch: int, seed: int,
                  start_step: int = 0, process_index: int = 0,
                  process_count: int = 1) -> Iterator[Batch]:
  """Yields this process's part of every training batch from `start_step`.

  Yields:
    dicts with `image` (uint8 `[b, H, W, C]`, or float32 signals), `label`
    int32 `[b]` and the dataset's extras (radio: `snr`), where
    `b = global_batch / process_count`.
  """
  n = len(ds)
  per_epoch = steps_per_epoch(n, global_batch)
  if per_epoch == 0:
    raise ValueError(f'config.batch_size={global_batch} exceeds the {n} '
                     'training examples; lower the batch size.')
  rows = _process_slice(global_batch, process_index, process_count)
  step = start_step
  while True:
    epoch, position = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    for p in range(position, per_epoch):
      idx = perm[p * global_batch:(p + 1) * global_batch][rows]
      yield {'image': ds.images[idx], 'label': ds.labels[idx],
             **{k: v[idx] for k, v in ds.extras.items()}}
    step = (epoch + 1) * per_epoch


def eval_indices(num_total: int, num_examples: int = -1) -> np.ndarray:
  """Rows to evaluate: all, or a fixed random subset of `num_examples`.

  A subset is drawn with a fixed seed (and then sorted) rather than taken
  from the front, because many test files are sorted by class: the first
  1000 CIFAR-10 test images of a class-sorted file are all airplanes.
  """
  if num_examples < 0 or num_examples >= num_total:
    return np.arange(num_total)
  rng = np.random.default_rng(0)
  return np.sort(rng.choice(num_total, num_examples, replace=False))


def eval_batches(ds: ImageDataset, *, global_batch: int,
                 process_index: int = 0, process_count: int = 1,
                 num_examples: int = -1) -> Iterator[Batch]:
  """Visits every example once, padding the last batch and masking the pad.

  Args:
    ds: the dataset.
    global_batch: examples per global batch.
    num_examples: evaluate a fixed subset of this size (`eval_indices`;
      -1: all).

  Yields:
    dicts with `image`, `label`, `mask` (float32, 1 for real examples) and
    `index` (the example's row in the dataset, which seeds its attack keys),
    this process's slice of each padded global batch.
  """
  rows_to_eval = eval_indices(len(ds), num_examples)
  n = len(rows_to_eval)
  rows = _process_slice(global_batch, process_index, process_count)
  for start in range(0, n, global_batch):
    pos = np.arange(start, start + global_batch)
    mask = (pos < n).astype(np.float32)
    idx = rows_to_eval[np.minimum(pos, n - 1)][rows]
    yield {'image': ds.images[idx], 'label': ds.labels[idx],
           'mask': mask[rows], 'index': idx.astype(np.int32),
           **{k: v[idx] for k, v in ds.extras.items()}}
