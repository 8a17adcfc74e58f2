"""The real RadioML 2016.10A file, read safely and split reproducibly.

DeepSig distributes RML2016.10A as `RML2016.10a.tar.bz2`, which unpacks to
`RML2016.10a_dict.pkl`: a Python-2 cPickle of `{(modulation: str, snr: int):
float32 [1000, 2, 128]}` (11 modulations x 20 SNRs, rows I and Q). Reference:
T. O'Shea & N. West, "Radio Machine Learning Dataset Generation with GNU
Radio", GRCon 2016; license CC BY-NC-SA 4.0.

A pickle can run any callable it names, so the file is read with an
unpickler that resolves only the few numpy globals an array needs; anything
else (`os.system`, `builtins.eval`, a class) is refused before it is called.
The split is `amc_synthetic.stratified_split`, so real and synthetic data
share one code path.
"""

import codecs
import os
import pickle

from absl import logging
import numpy as np

from jard.data import amc_synthetic
from jard.data.sources import DataError

# pylint: disable=g-import-not-at-top
try:  # numpy >= 2 moved the array internals to numpy._core.
  from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
  from numpy.core import multiarray as _multiarray
# pylint: enable=g-import-not-at-top

DOWNLOAD_HINT = (
    'download RML2016.10a.tar.bz2 from https://www.deepsig.ai/datasets (or '
    'opendata.deepsig.io), unpack it and point the field at '
    'RML2016.10a_dict.pkl, or use the offline synthetic look-alike '
    '(jard.data.amc_synthetic)')


def _latin1_bytes(text, encoding='latin1'):
  """Python 3 pickles (protocol < 3) store bytes as `_codecs.encode(s, enc)`."""
  if codecs.lookup(encoding).name != 'iso8859-1':
    raise pickle.UnpicklingError(f'refused _codecs.encode to {encoding!r}')
  return codecs.encode(text, encoding)


# The globals a pickled ndarray needs, under the module names written by
# Python 2 / numpy 1 (`numpy.core`) and by numpy 2 (`numpy._core`), and
# Python 3's encoding of bytes for protocols 0-2.
_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_bytes,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED`; every other global raises DataError."""

  def __init__(self, file, *, path: str, field: str):
    super().__init__(file, encoding='latin1')  # Python-2 str -> str.
    self._path, self._field = path, field

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise DataError(
          f'{self._field}: {self._path!r} is not a RadioML dict: its pickle '
          f'asks for {module}.{name}, and only numpy array internals are '
          'allowed (nothing was executed).') from None

  def persistent_load(self, pid):
    raise DataError(f'{self._field}: {self._path!r} is not a RadioML dict '
                    '(it uses pickle persistent ids).')


def load_pickle(path: str, *, field: str = 'config.dataset.train') -> dict:
  """Reads an RML2016 dict pickle with the restricted unpickler.

  Args:
    path: `RML2016.10a_dict.pkl` (or another pickle in the same layout, such
      as RML2016.10B's `.dat`).
    field: the config field that named `path`, for error messages.

  Returns:
    `{(modulation, snr): float32 [n, 2, 128]}`, as stored.

  Raises:
    DataError: missing file, corrupt or truncated pickle, a global other
      than numpy's array internals, or a result that is not the RML layout.
  """
  if not os.path.isfile(path):
    raise DataError(f'{field}: RadioML file {path!r} does not exist; '
                    f'{DOWNLOAD_HINT}.')
  try:
    with open(path, 'rb') as f:
      data = _ArrayOnlyUnpickler(f, path=path, field=field).load()
  except DataError:
    raise
  except Exception as e:  # Truncation and corruption raise many types.
    raise DataError(f'{field}: cannot unpickle {path!r} ({type(e).__name__}: '
                    f'{e}); the file is corrupt or truncated, '
                    f'{DOWNLOAD_HINT}.') from e
  amc_synthetic.check_layout(data, where=f'{field}: {path!r}')
  return data


def load(path: str, *, role: str, seed: int, train_fraction: float = 0.5,
         field: str = 'config.dataset.train'
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One half of a seeded split of a RadioML 2016 dict file.

  The split is stratified by (modulation, SNR), so each half holds the same
  number of examples of every pair (500 of 1000 for the default 50/50).
  Different `role`s with the same `seed` give disjoint halves that cover the
  file.

  Args:
    path: the pickle (see `load_pickle`).
    role: `'train'` or `'test'`.
    seed: split seed.
    train_fraction: share of each (modulation, SNR) group in train.
    field: the config field that named `path`, for error messages.

  Returns:
    `(signals, labels, snrs)`: float32 `[N, 2, 128]`, int32 `[N]` (index in
    `amc_synthetic.MODULATIONS`), int32 `[N]` (dB labels).

  Raises:
    DataError: see `load_pickle`; also a bad `role`.
  """
  if role not in ('train', 'test'):
    raise DataError(f'{field}: role={role!r}; use "train" or "test".')
  signals, labels, snrs = amc_synthetic.to_arrays(
      load_pickle(path, field=field), where=f'{field}: {path!r}')
  train_idx, test_idx = amc_synthetic.stratified_split(
      labels, snrs, seed=seed, train_fraction=train_fraction)
  idx = train_idx if role == 'train' else test_idx
  logging.info('Loaded RadioML %s (%s half, seed %d): %d of %d examples.',
               path, role, seed, len(idx), len(labels))
  return signals[idx], labels[idx], snrs[idx]
