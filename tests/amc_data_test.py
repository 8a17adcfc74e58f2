"""Tests for the AMC data: the RML2016.10A look-alike and the real-file loader.

The generator must be deterministic, balanced, at the labelled SNR and
L1-normalised like RML; its building blocks (RRC, constellations, CPFSK,
AM-SSB modes) are checked against their definitions. The loader must read
the real layout (including a Python-2 style pickle), split it reproducibly
and refuse, without running it, anything a pickle could execute.
"""

import os
import pickle
import struct
import time

import numpy as np
import pytest

from jard.data import amc_synthetic
from jard.data import radioml
from jard.data.sources import DataError

MODS = amc_synthetic.MODULATIONS
SNRS = amc_synthetic.SNRS
FIELD = 'config.dataset.train'


@pytest.fixture(scope='module')
def small():
  """Every key, 24 examples each, with the measured SNRs."""
  return amc_synthetic.generate(24, seed=7, return_snr_measured=True)


# ------------------------------------------------------------- generator


def test_same_seed_same_arrays_other_seed_different():
  kwargs = dict(modulations=('QAM16', 'WBFM', 'AM-SSB'), snrs=(-4, 10))
  a = amc_synthetic.generate(6, seed=3, **kwargs)
  b = amc_synthetic.generate(6, seed=3, **kwargs)
  c = amc_synthetic.generate(6, seed=4, **kwargs)
  assert sorted(a) == sorted(b) == sorted(c) == sorted(
      (m, s) for m in kwargs['modulations'] for s in kwargs['snrs'])
  for key in a:
    assert a[key].dtype == np.float32 and a[key].shape == (6, 2, 128)
    np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a[key], c[key]), key


def test_key_streams_do_not_depend_on_the_other_keys(small):
  data, _ = small
  alone = amc_synthetic.generate(24, seed=7, modulations=('GFSK',),
                                 snrs=(6,))
  np.testing.assert_array_equal(alone[('GFSK', 6)], data[('GFSK', 6)])


def test_to_arrays_is_exactly_balanced(small):
  data, _ = small
  signals, labels, snrs = amc_synthetic.to_arrays(data)
  assert signals.shape == (11 * 20 * 24, 2, 128) and signals.dtype == np.float32
  assert labels.dtype == np.int32 and snrs.dtype == np.int32
  pairs, counts = np.unique(np.stack([labels, snrs], 1), axis=0,
                            return_counts=True)
  assert len(pairs) == 11 * 20 and set(counts) == {24}
  assert set(labels) == set(range(11)) and set(snrs) == set(SNRS)
  # Sorted modulation x sorted SNR order, rows as stored under each key.
  assert np.all(np.diff(labels.astype(int) * 100 + snrs) >= 0)
  np.testing.assert_array_equal(signals[:24], data[('8PSK', -20)])
  np.testing.assert_array_equal(signals[-24:], data[('WBFM', 18)])


def test_measured_snr_matches_the_label(small):
  _, measured = small
  for mod in MODS:
    for snr in SNRS:
      values = measured[(mod, snr)]
      assert values.shape == (24,) and values.dtype == np.float64
      assert abs(values.mean() - snr) < 0.5, (mod, snr, values.mean())


def test_faithful_am_ssb_has_no_signal_power():
  _, measured = amc_synthetic.generate(
      8, seed=0, modulations=('AM-SSB',), snrs=(0, 18), am_ssb='faithful',
      return_snr_measured=True)
  assert all(np.all(np.isneginf(v)) for v in measured.values())


def test_vectors_have_unit_l1_norm(small):
  signals, _, _ = amc_synthetic.to_arrays(small[0])
  l1 = np.sum(np.hypot(signals[:, 0], signals[:, 1]), axis=1)
  np.testing.assert_allclose(l1, 1.0, rtol=1e-5)


def test_bad_generator_arguments():
  with pytest.raises(ValueError, match='am_ssb'):
    amc_synthetic.generate(2, 0, am_ssb='usb')
  with pytest.raises(ValueError, match='modulations'):
    amc_synthetic.generate(2, 0, modulations=('OOK',))
  with pytest.raises(ValueError, match='snrs'):
    amc_synthetic.generate(2, 0, snrs=(1.5,))


# ---------------------------------------------------------- recipe parts


def test_rrc_taps_are_symmetric_unit_energy_and_nyquist():
  h = amc_synthetic.rrc_taps(0.35, 8, 11)
  assert len(h) == 89
  np.testing.assert_allclose(h, h[::-1], atol=1e-12)
  np.testing.assert_allclose(np.sum(h**2), 8.0)
  # RRC * RRC = raised cosine: 1 at t = 0, ~0 at the other symbol instants.
  rc = np.convolve(h, h) / 8
  centre = len(rc) // 2
  assert rc[centre] == pytest.approx(1.0)
  others = np.delete(rc[centre % 8::8], centre // 8)
  assert np.max(np.abs(others)) < 0.01


def test_rrc_singular_points_match_the_limit():
  # alpha = 0.25 at 8 sps puts t = +-1/(4 alpha) = +-1 symbol on the grid.
  exact = amc_synthetic.rrc_taps(0.25, 8, 8)
  nearby = amc_synthetic.rrc_taps(0.25 + 1e-6, 8, 8)  # general formula only
  assert np.all(np.isfinite(exact))
  assert exact[24] == pytest.approx(nearby[24], abs=1e-5)
  np.testing.assert_allclose(exact, nearby, atol=1e-5)


def test_constellations_have_mean_magnitude_one():
  sizes = {'BPSK': 2, 'QPSK': 4, '8PSK': 8, 'PAM4': 4, 'QAM16': 16,
           'QAM64': 64}
  for name, size in sizes.items():
    points = amc_synthetic.constellation(name)
    assert len(np.unique(np.round(points, 9))) == size, name
    assert np.mean(np.abs(points)) == pytest.approx(1.0), name
  np.testing.assert_allclose(amc_synthetic.constellation('PAM4').imag, 0)
  np.testing.assert_allclose(  # QPSK sits at 45 degrees.
      np.abs(amc_synthetic.constellation('QPSK').real), np.sqrt(0.5))


def test_cpfsk_and_gfsk_are_constant_envelope_with_bounded_phase_steps():
  rng = np.random.default_rng(0)
  cpfsk = amc_synthetic.baseband('CPFSK', 16, rng)
  step = np.angle(cpfsk[:, 1:] * np.conj(cpfsk[:, :-1]))
  np.testing.assert_allclose(np.abs(cpfsk), 1)
  np.testing.assert_allclose(np.abs(step), np.pi / 16, atol=1e-9)
  assert np.any(step > 0) and np.any(step < 0)
  gfsk = amc_synthetic.baseband('GFSK', 16, rng)
  step = np.angle(gfsk[:, 1:] * np.conj(gfsk[:, :-1]))
  np.testing.assert_allclose(np.abs(gfsk), 1)
  assert np.max(np.abs(step)) <= 0.1 + 1e-9
  # The Gaussian filter smooths the +-0.1 steps: intermediate values occur.
  assert np.mean(np.abs(step) < 0.09) > 0.05


def _lag1_correlation(data):
  x = data[:, 0] + 1j * data[:, 1]
  return np.abs(np.mean(x[:, 1:] * np.conj(x[:, :-1]), axis=1)) / np.mean(
      np.abs(x)**2, axis=1)


def test_faithful_am_ssb_is_noise_and_correct_am_ssb_is_not():
  kwargs = dict(modulations=('AM-SSB', 'BPSK'), snrs=(-10, 18))
  faithful = amc_synthetic.generate(64, 1, am_ssb='faithful', **kwargs)
  correct = amc_synthetic.generate(64, 1, **kwargs)
  # White noise has ~zero lag-1 correlation; a carrier plus slow speech ~1.
  for snr in (-10, 18):
    assert np.mean(_lag1_correlation(faithful[('AM-SSB', snr)])) < 0.15
  assert np.mean(_lag1_correlation(correct[('AM-SSB', 18)])) > 0.9
  # Only the AM-SSB class depends on the mode.
  for snr in (-10, 18):
    np.testing.assert_array_equal(faithful[('BPSK', snr)],
                                  correct[('BPSK', snr)])


# --------------------------------------------------------------- split


def test_stratified_split_exact_disjoint_sorted_and_seeded():
  labels = np.repeat(np.arange(11), 40) % 11
  snrs = np.tile(np.repeat([-2, 0, 2, 4], 10), 11)
  for fraction, per_group in ((0.5, 5), (0.3, 3), (0.75, 8)):
    train, test = amc_synthetic.stratified_split(
        labels, snrs, seed=0, train_fraction=fraction)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.union1d(train, test), np.arange(440))
    _, counts = np.unique(np.stack([labels[train], snrs[train]], 1), axis=0,
                          return_counts=True)
    assert len(counts) == 44 and set(counts) == {per_group}
  again, _ = amc_synthetic.stratified_split(labels, snrs, seed=0)
  other, _ = amc_synthetic.stratified_split(labels, snrs, seed=1)
  first, _ = amc_synthetic.stratified_split(labels, snrs, seed=0)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_stratified_split_rounds_each_unequal_group():
  labels = np.array([0] * 7 + [1] * 3 + [2])
  train, test = amc_synthetic.stratified_split(
      labels, np.zeros_like(labels), seed=5, train_fraction=0.5)
  assert np.bincount(labels[train], minlength=3).tolist() == [
      round(7 * 0.5), round(3 * 0.5), round(0.5)]
  assert len(train) + len(test) == 11


# --------------------------------------------------------------- cache


def test_cached_generate_reuses_and_repairs_the_cache(tmp_path, monkeypatch):
  kwargs = dict(modulations=('BPSK', 'WBFM'), snrs=(0, 8))
  first = amc_synthetic.cached_generate(str(tmp_path), 5, 2, **kwargs)
  expected = amc_synthetic.to_arrays(
      amc_synthetic.generate(5, 2, **kwargs))
  for got, want in zip(first, expected):
    np.testing.assert_array_equal(got, want)
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith('.npz'), files
  assert 'v1' in files[0] and 'n5' in files[0] and 'seed2' in files[0]

  def fail(*args, **kwargs):
    raise AssertionError('regenerated although the cache is valid')

  real_generate = amc_synthetic.generate
  monkeypatch.setattr(amc_synthetic, 'generate', fail)
  for got, want in zip(
      amc_synthetic.cached_generate(str(tmp_path), 5, 2, **kwargs), first):
    np.testing.assert_array_equal(got, want)

  path = tmp_path / files[0]
  path.write_bytes(path.read_bytes()[:200])  # Truncated mid-write.
  monkeypatch.setattr(amc_synthetic, 'generate', real_generate)
  repaired = amc_synthetic.cached_generate(str(tmp_path), 5, 2, **kwargs)
  for got, want in zip(repaired, first):
    np.testing.assert_array_equal(got, want)
  assert os.listdir(tmp_path) == files  # No temporary files left behind.
  # Another parameter is another file, not a stale read.
  other = amc_synthetic.cached_generate(str(tmp_path), 5, 3, **kwargs)
  assert not np.array_equal(other[0], first[0])
  assert len(os.listdir(tmp_path)) == 2


# -------------------------------------------------------------- loader


def _rml_dict(n=6, snrs=(-10, 0, 10), seed=0):
  rng = np.random.default_rng(seed)
  return {(m, s): rng.standard_normal((n, 2, 128)).astype(np.float32)
          for m in MODS for s in snrs}


class _Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes like Python 2's cPickle: str as byte strings, `numpy.core`."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_py2_str(self, obj):
    raw = obj if isinstance(obj, bytes) else obj.encode('latin1')
    if len(raw) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(raw)) + raw)
    self.memoize(obj)

  dispatch[bytes] = save_py2_str
  dispatch[str] = save_py2_str

  def save_global(self, obj, name=None):
    module = obj.__module__.replace('numpy._core', 'numpy.core')
    self.write(pickle.GLOBAL +
               f'{module}\n{name or obj.__qualname__}\n'.encode())
    self.memoize(obj)


def _dump(path, obj, protocol=2):
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=protocol)
  return str(path)


@pytest.mark.parametrize('writer', ['py3_protocol2', 'py3_protocol0', 'py2'])
def test_load_pickle_reads_the_rml_layout(tmp_path, writer):
  data = _rml_dict()
  path = tmp_path / 'rml.pkl'
  if writer == 'py2':
    with open(path, 'wb') as f:
      _Py2Pickler(f, protocol=2).dump(data)
    assert b'numpy.core.multiarray' in path.read_bytes()
  else:
    _dump(path, data, protocol=int(writer[-1]))
  loaded = radioml.load_pickle(str(path))
  assert sorted(loaded) == sorted(data)
  for key, value in data.items():
    assert loaded[key].dtype == np.float32
    np.testing.assert_array_equal(loaded[key], value)


def test_load_returns_disjoint_balanced_halves(tmp_path):
  data = _rml_dict()
  path = _dump(tmp_path / 'rml.pkl', data)
  halves = {role: radioml.load(path, role=role, seed=2016)
            for role in ('train', 'test')}
  for signals, labels, snrs in halves.values():
    assert signals.shape == (11 * 3 * 3, 2, 128) and signals.dtype == np.float32
    _, counts = np.unique(np.stack([labels, snrs], 1), axis=0,
                          return_counts=True)
    assert len(counts) == 33 and set(counts) == {3}
    for signal, label, snr in zip(signals[::7], labels[::7], snrs[::7]):
      assert any(np.array_equal(signal, row)
                 for row in data[(MODS[label], int(snr))])
  rows = lambda s: {r.tobytes() for r in s}  # pylint: disable=g-long-lambda
  train, test = rows(halves['train'][0]), rows(halves['test'][0])
  assert not train & test and len(train | test) == 11 * 3 * 6
  again = radioml.load(path, role='train', seed=2016)
  np.testing.assert_array_equal(again[0], halves['train'][0])


class _System:

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


class _Eval:

  def __init__(self, code):
    self.code = code

  def __reduce__(self):
    return eval, (self.code,)


@pytest.mark.parametrize('payload', ['system', 'eval', 'nested', 'class'])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, payload):
  marker = tmp_path / 'pwned'
  if payload == 'system':
    obj = _System(f'touch {marker}')
  elif payload == 'eval':
    obj = _Eval(f'open({str(marker)!r}, "w").close()')
  elif payload == 'nested':  # Valid arrays first, the exploit in a value.
    obj = _rml_dict(n=2)
    obj[('QPSK', 2)] = _System(f'touch {marker}')
  else:  # Any class at all, even a harmless one.
    obj = {('QPSK', 2): DataError('x')}
  path = _dump(tmp_path / 'evil.pkl', obj)
  with pytest.raises(DataError, match='not a RadioML dict') as info:
    radioml.load_pickle(path, field=FIELD)
  message = str(info.value)
  assert FIELD in message and path in message
  refused = {'system': ('posix.system', 'nt.system'),
             'nested': ('posix.system', 'nt.system'),
             'eval': ('builtins.eval', '__builtin__.eval'),
             'class': ('jard.data.sources.DataError',)}[payload]
  assert any(name in message for name in refused), message
  assert not marker.exists()


@pytest.mark.parametrize('obj, match', [
    ([np.zeros((2, 2, 128), np.float32)], 'got list'),
    ({}, 'got an empty dict'),
    ({('QPSK', 2): np.zeros((2, 128, 2), np.float32)}, r'\(2, 128, 2\)'),
    ({('QPSK', 2): np.zeros((2, 2, 128), np.int16)}, 'int16'),
    ({('OOK', 2): np.zeros((2, 2, 128), np.float32)}, "'OOK'"),
    ({('QPSK', 2.0): np.zeros((2, 2, 128), np.float32)}, 'int SNR'),
    ({'QPSK': np.zeros((2, 2, 128), np.float32)}, "key 'QPSK'"),
])
def test_wrong_structure_is_refused(tmp_path, obj, match):
  path = _dump(tmp_path / 'wrong.pkl', obj)
  with pytest.raises(DataError, match=match) as info:
    radioml.load(path, role='train', seed=0, field=FIELD)
  assert FIELD in str(info.value) and '[n, 2, 128]' in str(info.value)


def test_missing_truncated_and_bad_role(tmp_path):
  with pytest.raises(DataError, match=f'{FIELD}.*does not exist.*download'):
    radioml.load(str(tmp_path / 'nope.pkl'), role='train', seed=0,
                 field=FIELD)
  path = _dump(tmp_path / 'rml.pkl', _rml_dict(n=2))
  with open(path, 'rb') as f:
    blob = f.read()
  for cut in (len(blob) // 2, 3):
    with open(path, 'wb') as f:
      f.write(blob[:cut])
    with pytest.raises(DataError, match='corrupt or truncated'):
      radioml.load_pickle(path, field=FIELD)
  with open(path, 'wb') as f:
    f.write(b'\x00garbage' * 10)
  with pytest.raises(DataError, match=FIELD):
    radioml.load_pickle(path, field=FIELD)
  _dump(path, _rml_dict(n=2))
  with pytest.raises(DataError, match='role'):
    radioml.load(path, role='val', seed=0, field=FIELD)


# -------------------------------------------------------------- timing


def test_report_generation_time():
  """Not an assertion: the time for RML-sized halves (110k examples)."""
  start = time.perf_counter()
  data = amc_synthetic.generate(500, seed=0)
  elapsed = time.perf_counter() - start
  assert sum(len(v) for v in data.values()) == 110_000
  print(f'\ngenerate(num_per_key=500): 110000 examples in {elapsed:.2f} s '
        f'(cpu affinity {sorted(os.sched_getaffinity(0))})')
