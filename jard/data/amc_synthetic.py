"""An offline, deterministic look-alike of RadioML 2016.10A (numpy only).

RML2016.10A (O'Shea & West, "Radio Machine Learning Dataset Generation with
GNU Radio", GRCon 2016) is a dict `{(modulation, snr_db): float32 [1000, 2,
128]}` of 11 modulations x 20 SNR labels. This module rebuilds that layout
from the published GNU Radio recipe, without GNU Radio, audio files or the
network, and bit-identically for a given seed:

* source: i.i.d. bits/symbols (digital) or synthetic speech-like audio with
  silences (analog);
* modulator at 8 samples/symbol (200 kHz for 25 kBd): RRC(0.35) linear
  modulations with gr-mapper constellations (mean |s| = 1), GFSK (BT 0.35,
  0.1 rad/sample), CPFSK (h = 0.5), WBFM (75 kHz deviation), AM-DSB and AM-SSB
  with carrier;
* channel, drawn independently per example and static within a burst:
  sample-rate offset, timing offset, carrier phase and frequency offset,
  3-path fading (Rician K = 4 line of sight, then two Rayleigh paths);
* AWGN at the labelled SNR *as measured* over the 128-sample window (the
  original's labels are not a true SNR; here they are, within noise);
* per-vector L1 normalisation `x / sum_n |x_n|`, stored as `[I; Q]`.

`am_ssb='faithful'` replicates the original AM-SSB bug (the modulator output
is `sin(0) = 0`, so the class is noise only); the default `'correct'` emits
upper-sideband AM with carrier, as the GNU Radio chain intended.
"""

import hashlib
import os
import tempfile

from absl import logging
import numpy as np

from jard.data.sources import DataError

MODULATIONS = ('8PSK', 'AM-DSB', 'AM-SSB', 'BPSK', 'CPFSK', 'GFSK', 'PAM4',
               'QAM16', 'QAM64', 'QPSK', 'WBFM')
SNRS = tuple(range(-20, 20, 2))
SAMPLES = 128
SPS = 8  # Samples per symbol: 25 kBd at the nominal 200 kHz sample rate.
AM_SSB_MODES = ('correct', 'faithful')

_FORMAT_VERSION = 1  # Bump whenever the generated numbers change.
_RRC_ALPHA, _RRC_SPAN = 0.35, 11
_GFSK_BT, _GFSK_SENSITIVITY = 0.35, 0.1
_FM_DEVIATION = 2 * np.pi * 75e3 / 200e3  # rad/sample per unit message.
_AUDIO_DECIMATION = 25  # 200 kHz / 25 = 8 kHz speech-band sample rate.
_PATH_DELAYS = np.array([0.0, 0.9, 1.7])  # samples
_PATH_MAGS = np.array([1.0, 0.8, 0.3])
_RICIAN_K = 4.0
_FADING_OFFSETS = np.arange(8) - 3  # FIR tap positions k of the fading filter.
# Samples before the channel: the fading FIR eats 7, the timing offset up to
# SPS, and the cubic interpolator needs one sample before and two after.
_BURST = SAMPLES + len(_FADING_OFFSETS) - 1 + SPS + 4
# E[sum_k |taps_k|^2]: the mean power gain of the fading channel, i.e. the
# received power of a unit-power signal (cross terms vanish: the paths are
# independent and zero-mean, the line-of-sight phase being uniform).
_MEAN_CHANNEL_GAIN = float(np.sum(
    _PATH_MAGS[:, None]**2 *
    np.sinc(_FADING_OFFSETS[None, :] - _PATH_DELAYS[:, None])**2))


def rrc_taps(alpha: float, sps: int, span: int) -> np.ndarray:
  """Root-raised-cosine taps, `span * sps + 1` of them, with sum(h^2) = sps.

  h(t) = [sin(pi t (1-a)) + 4 a t cos(pi t (1+a))] / [pi t (1 - (4 a t)^2)]
  with t in symbols; h(0) = 1 - a + 4a/pi and h(+-1/(4a)) = a/sqrt(2) [(1 +
  2/pi) sin(pi/(4a)) + (1 - 2/pi) cos(pi/(4a))]. The energy normalisation
  makes zero-insertion upsampling by `sps` followed by this filter keep the
  per-sample power equal to E|s|^2 (the RC pulse h*h is then 1 at t = 0).
  """
  t = (np.arange(span * sps + 1) - span * sps / 2) / sps
  with np.errstate(divide='ignore', invalid='ignore'):
    h = ((np.sin(np.pi * t * (1 - alpha)) +
          4 * alpha * t * np.cos(np.pi * t * (1 + alpha))) /
         (np.pi * t * (1 - (4 * alpha * t)**2)))
  # Limits only at the singular points themselves: 1e-8 away the general
  # formula is still accurate to ~1e-8.
  h[np.abs(t) < 1e-8] = 1 - alpha + 4 * alpha / np.pi
  edge = np.abs(np.abs(t) - 1 / (4 * alpha)) < 1e-8
  h[edge] = alpha / np.sqrt(2) * (
      (1 + 2 / np.pi) * np.sin(np.pi / (4 * alpha)) +
      (1 - 2 / np.pi) * np.cos(np.pi / (4 * alpha)))
  return h * np.sqrt(sps / np.sum(h**2))


def constellation(name: str) -> np.ndarray:
  """The gr-mapper points of a linear modulation, scaled to mean |s| = 1."""
  if name == 'BPSK':
    points = np.array([-1.0, 1.0])
  elif name == 'QPSK':
    points = np.exp(1j * np.pi * (np.arange(4) / 2 + 0.25))
  elif name == '8PSK':
    points = np.exp(1j * np.pi * np.arange(8) / 4)
  elif name == 'PAM4':
    points = np.array([-3.0, -1.0, 1.0, 3.0])
  elif name in ('QAM16', 'QAM64'):
    side = np.arange(-np.sqrt(int(name[3:])) + 1, np.sqrt(int(name[3:])), 2)
    points = (side[:, None] + 1j * side[None, :]).ravel()
  else:
    raise ValueError(f'{name!r} is not a linear modulation.')
  return (points / np.mean(np.abs(points))).astype(complex)


def _lowpass(cutoff: float, num_taps: int) -> np.ndarray:
  """Hann-windowed sinc low-pass, cutoff in cycles/sample, unit DC gain."""
  k = np.arange(num_taps) - (num_taps - 1) / 2
  h = 2 * cutoff * np.sinc(2 * cutoff * k) * np.hanning(num_taps + 2)[1:-1]
  return h / h.sum()


def _hilbert(num_taps: int) -> np.ndarray:
  """Blackman-windowed Hilbert FIR (odd length): H{cos} = sin in band."""
  k = np.arange(num_taps) - (num_taps - 1) // 2
  h = np.where(k % 2 == 1, 2 / (np.pi * np.where(k == 0, 1, k)), 0.0)
  return h * np.blackman(num_taps + 2)[1:-1]


def _fir(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """'valid' convolution along axis 1: [n, L] -> [n, L - len(taps) + 1]."""
  out_len = x.shape[1] - len(taps) + 1
  y = np.zeros((x.shape[0], out_len), np.result_type(x, taps))
  for j, tap in enumerate(taps):
    y += tap * x[:, len(taps) - 1 - j:len(taps) - 1 - j + out_len]
  return y


def _cubic(x: np.ndarray, t: np.ndarray) -> np.ndarray:
  """Catmull-Rom interpolation of rows of `x` [n, L] at times `t` [n, M].

  Needs 1 <= t <= L - 3 so that the four neighbours exist.
  """
  i = np.floor(t).astype(np.int64)
  f = t - i
  # Flat gather: one fancy index per neighbour instead of take_along_axis.
  flat = x.ravel()
  i += np.arange(x.shape[0])[:, None] * x.shape[1]
  pm, p0, p1, p2 = flat[i - 1], flat[i], flat[i + 1], flat[i + 2]
  # Horner form of the Catmull-Rom cubic through (pm, p0, p1, p2) at f.
  c2 = pm - 2.5 * p0 + 2 * p1 - 0.5 * p2
  c3 = 0.5 * (p2 - pm) + 1.5 * (p0 - p1)
  return ((c3 * f + c2) * f + 0.5 * (p1 - pm)) * f + p0


def _linear(name: str, num: int, length: int, rng) -> np.ndarray:
  points = constellation(name)
  taps = rrc_taps(_RRC_ALPHA, SPS, _RRC_SPAN)
  # Polyphase form of zero-insertion upsampling + RRC: output sample 8j + p is
  # sum_q s[j - q] h[8q + p], so each phase is a short FIR at symbol rate.
  q_len = -(-len(taps) // SPS)
  phases = np.pad(taps, (0, q_len * SPS - len(taps))).reshape(q_len, SPS)
  symbols = points[rng.integers(len(points), size=(num, -(-length // SPS)
                                                   + q_len))]
  y = np.stack([_fir(symbols, phases[:, p]) for p in range(SPS)], axis=-1)
  return y.reshape(num, -1)[:, -length:]


def _nrz(num: int, length: int, extra: int, rng) -> np.ndarray:
  """Random +-1 bits held for SPS samples: [num, length + extra (+ < SPS)]."""
  bits = 2.0 * rng.integers(2, size=(num, -(-(length + extra) // SPS))) - 1
  return np.repeat(bits, SPS, axis=1)


def _gfsk(num: int, length: int, rng) -> np.ndarray:
  # Gaussian with BT = 0.35 over 4 symbols; sigma in symbols from the -3 dB
  # bandwidth B: sigma = sqrt(ln 2) / (2 pi BT).
  t = (np.arange(4 * SPS + 1) - 2 * SPS) / SPS
  sigma = np.sqrt(np.log(2)) / (2 * np.pi * _GFSK_BT)
  taps = np.exp(-t**2 / (2 * sigma**2))
  freq = _fir(_nrz(num, length, len(taps) - 1, rng), taps / taps.sum())
  phase = rng.uniform(0, 2 * np.pi, (num, 1))
  return np.exp(1j * (phase + np.cumsum(_GFSK_SENSITIVITY * freq, axis=1)))[
      :, -length:]


def _cpfsk(num: int, length: int, rng) -> np.ndarray:
  # Binary CPFSK, h = 0.5, rectangular pulse: +-h*pi/SPS = +-pi/16 per sample.
  steps = _nrz(num, length, 0, rng) * (0.5 * np.pi / SPS)
  phase = rng.uniform(0, 2 * np.pi, (num, 1))
  return np.exp(1j * (phase + np.cumsum(steps, axis=1)))[:, -length:]


def _speech(num: int, length: int, rng) -> tuple[np.ndarray, np.ndarray]:
  """Speech-like message m and its Hilbert transform, [num, length] each.

  Band-pass (300-3400 Hz) Gaussian noise at 8 kHz, cubic-interpolated to
  200 kHz, times a 2-6 Hz syllabic envelope that is zero ~30% of the time
  (silences: the AM/FM classes then carry a bare carrier, as in RML).
  Standard deviation before the envelope is 1/6, so the peak is ~0.5 like
  the original's int16 audio / 65535. A 128-sample window is 0.64 ms, so m
  varies slowly within it and the envelope is almost constant.
  """
  band = _lowpass(3400 / 8000, 31) - _lowpass(300 / 8000, 31)
  hilbert = _hilbert(63)
  coarse_len = -(-length // _AUDIO_DECIMATION) + 5
  white = rng.standard_normal((num, coarse_len + len(band) + len(hilbert) - 2))
  m = _fir(white, band) / np.sqrt(np.sum(band**2))  # unit variance
  mh = _fir(m, hilbert)
  m = m[:, (len(hilbert) - 1) // 2:-((len(hilbert) - 1) // 2)]
  start = rng.uniform(0, _AUDIO_DECIMATION, (num, 1))
  t = 1 + (start + np.arange(length)) / _AUDIO_DECIMATION
  # sin(.) + c < 0 for a fraction 1/2 - arcsin(c)/pi = 0.3 of the time.
  c = np.sin(0.2 * np.pi)
  rate = rng.uniform(2, 6, (num, 1)) / 200e3
  envelope = np.maximum(np.sin(2 * np.pi * rate * np.arange(length) +
                               rng.uniform(0, 2 * np.pi, (num, 1))) + c, 0)
  analytic = _cubic(m + 1j * mh, t) * (envelope / (1 + c) / 6)
  return analytic.real, analytic.imag


def baseband(name: str, num: int, rng: np.random.Generator, *,
             length: int = _BURST, am_ssb: str = 'correct') -> np.ndarray:
  """Transmitted complex baseband of `num` examples, [num, length] complex128.

  Digital classes have ~unit power (E|s|^2 of the mean-|s| = 1 constellation
  for the linear ones); analog classes use a speech-like message m (|m| <~
  0.5): WBFM exp(j cumsum(2 pi 75e3/200e3 m)), AM-DSB 1 + m, AM-SSB (1 + m) +
  j H{m} (or 0 with `am_ssb='faithful'`).
  """
  if name in ('BPSK', 'QPSK', '8PSK', 'PAM4', 'QAM16', 'QAM64'):
    return _linear(name, num, length, rng)
  if name == 'GFSK':
    return _gfsk(num, length, rng)
  if name == 'CPFSK':
    return _cpfsk(num, length, rng)
  if name == 'AM-SSB' and am_ssb == 'faithful':
    return np.zeros((num, length), complex)
  m, mh = _speech(num, length, rng)
  if name == 'WBFM':
    return np.exp(1j * np.cumsum(_FM_DEVIATION * m, axis=1))
  if name == 'AM-DSB':
    return (1 + m).astype(complex)
  if name == 'AM-SSB':
    return 1 + m + 1j * mh
  raise ValueError(f'Unknown modulation {name!r}; use one of {MODULATIONS}.')


def _channel(s: np.ndarray, rng) -> np.ndarray:
  """Per-example SRO/timing, CFO/phase and 3-path fading: [n, L] -> [n, 128].

  Timing: t_n = 1 + d + tau0 + n (1 + eps), eps ~ U(+-1e-4), tau0 ~ U(0, 1)
  and an integer d ~ U{0..7}, so the symbol phase within the window is
  uniform as with RML's random window starts.
  """
  num = s.shape[0]
  width = SAMPLES + len(_FADING_OFFSETS) - 1
  eps = rng.uniform(-1e-4, 1e-4, (num, 1))
  t0 = 1 + rng.integers(SPS, size=(num, 1)) + rng.uniform(0, 1, (num, 1))
  x = _cubic(s, t0 + np.arange(width) * (1 + eps))
  cfo = rng.uniform(-1e-3, 1e-3, (num, 1))
  theta = rng.uniform(0, 2 * np.pi, (num, 1))
  x = x * np.exp(1j * (2 * np.pi * cfo * np.arange(width) + theta))
  gains = (rng.standard_normal((num, 3)) +
           1j * rng.standard_normal((num, 3))) / np.sqrt(2)
  los = np.exp(1j * rng.uniform(0, 2 * np.pi, num))
  gains[:, 0] = (np.sqrt(_RICIAN_K / (_RICIAN_K + 1)) * los +
                 np.sqrt(1 / (_RICIAN_K + 1)) * gains[:, 0])
  sincs = np.sinc(_FADING_OFFSETS[None, :] - _PATH_DELAYS[:, None])  # [3, K]
  taps = (gains * _PATH_MAGS) @ sincs  # [n, K]
  # y_m = sum_j taps_j x_{m + K-1 - j}, over sliding windows of x.
  windows = np.lib.stride_tricks.sliding_window_view(x, SAMPLES, axis=1)
  return np.einsum('nk,nkm->nm', taps[:, ::-1], windows)


def _check_args(num_per_key, seed, modulations, snrs, am_ssb):
  if am_ssb not in AM_SSB_MODES:
    raise ValueError(f'am_ssb={am_ssb!r}; use one of {AM_SSB_MODES}.')
  for name, value, low in (('num_per_key', num_per_key, 1), ('seed', seed, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
        value < low):
      raise ValueError(f'{name}={value!r} must be an int >= {low}.')
  unknown = [m for m in modulations if m not in MODULATIONS]
  if unknown:
    raise ValueError(f'modulations {unknown} unknown; use {MODULATIONS}.')
  if any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
         for s in snrs):
    raise ValueError(f'snrs={tuple(snrs)} must be ints (dB).')


def _snr_index(snr: int) -> int:
  """Index in SNRS, or a distinct non-negative code for off-grid SNRs."""
  if snr in SNRS:
    return SNRS.index(snr)
  return len(SNRS) + (2 * snr if snr >= 0 else -2 * snr - 1)


def _synthesise(mod: str, snr: int, num: int, rng, am_ssb: str):
  """`num` received, noisy, L1-normalised vectors of one key, and their SNRs."""
  y = _channel(baseband(mod, num, rng, am_ssb=am_ssb), rng)
  power = np.mean(y.real**2 + y.imag**2, axis=1)
  sigma = np.sqrt(np.where(power > 0, power, _MEAN_CHANNEL_GAIN) *
                  10**(-snr / 10) / 2)
  # (re, im) pairs of i.i.d. N(0, 1) viewed as complex: no extra copies.
  noise = rng.standard_normal((num, SAMPLES, 2)).view(complex)[..., 0]
  noise *= sigma[:, None]
  with np.errstate(divide='ignore'):
    measured = 10 * np.log10(
        power / np.mean(noise.real**2 + noise.imag**2, axis=1))
  y += noise
  y /= np.sum(np.abs(y), axis=1, keepdims=True)
  return np.stack([y.real, y.imag], axis=1), measured


def generate(num_per_key: int, seed: int, *, modulations=MODULATIONS,
             snrs=SNRS, am_ssb: str = 'correct',
             return_snr_measured: bool = False):
  """Synthesises `{(modulation, snr): float32 [num_per_key, 2, 128]}`.

  Each key draws from its own `PCG64(SeedSequence([seed, mod_idx,
  snr_idx]))`, so keys are independent, any subset is reproducible on its
  own and no global RNG state is touched. Computation is in float64; only the
  stored arrays are float32.

  Noise: per example, P = mean_n |y_n|^2 of the received window y and
  w ~ CN(0, P 10^(-snr/10)) per sample. Faithful AM-SSB has P = 0 and uses
  the mean received power of a unit-power signal instead.

  Args:
    num_per_key: examples per (modulation, snr) key, >= 1 (RML: 1000).
    seed: non-negative base seed.
    modulations: names from MODULATIONS.
    snrs: SNR labels in dB (ints).
    am_ssb: `'correct'` (USB with carrier) or `'faithful'` (noise only).
    return_snr_measured: also return the realised SNRs.

  Returns:
    The dict; with `return_snr_measured`, `(dict, measured)` where
    `measured[key]` is float64 `[num_per_key]`: 10 log10(P / mean_n |w_n|^2)
    before normalisation (-inf for faithful AM-SSB).
  """
  _check_args(num_per_key, seed, modulations, snrs, am_ssb)
  data, measured = {}, {}
  for mod in modulations:
    for snr in snrs:
      key = (mod, int(snr))
      rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
          [int(seed), MODULATIONS.index(mod), _snr_index(key[1])])))
      signals, measured[key] = _synthesise(mod, key[1], num_per_key, rng,
                                           am_ssb)
      data[key] = signals.astype(np.float32)
  return (data, measured) if return_snr_measured else data


def check_layout(data, *, where: str = 'AMC data') -> None:
  """Raises DataError unless `data` is `{(mod, int snr): float [n, 2, 128]}`.

  `mod` must be one of MODULATIONS; `where` names the source in the message.
  """
  layout = ('the RML2016.10A layout {(modulation: str, snr: int): float32 '
            f'[n, 2, {SAMPLES}]}}')
  if not isinstance(data, dict) or not data:
    found = 'an empty dict' if isinstance(data, dict) else type(data).__name__
    raise DataError(f'{where}: got {found}; expected a non-empty dict in '
                    f'{layout}.')
  for key, value in data.items():
    if not (isinstance(key, tuple) and len(key) == 2 and key[0] in MODULATIONS
            and isinstance(key[1], (int, np.integer))
            and not isinstance(key[1], bool)):
      raise DataError(f'{where}: key {key!r} is not (modulation, snr) with a '
                      f'modulation in {MODULATIONS} and an int SNR; expected '
                      f'{layout}.')
    if (not isinstance(value, np.ndarray) or value.ndim != 3 or
        value.shape[1:] != (2, SAMPLES) or
        not np.issubdtype(value.dtype, np.floating)):
      raise DataError(f'{where}: value of key {key!r} is '
                      f'{type(value).__name__} {getattr(value, "shape", "")} '
                      f'{getattr(value, "dtype", "")}; expected {layout}.')


def to_arrays(data: dict, *, where: str = 'AMC data'
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Flattens the RML dict layout into arrays.

  Keys are visited in sorted (modulation, snr) order, as O'Shea's tutorial
  stacks them.

  Args:
    data: `{(modulation: str, snr: int): array [n, 2, 128]}`.
    where: what `data` is (a file, a config field), for error messages.

  Returns:
    `(signals, labels, snrs)`: float32 `[N, 2, 128]`, int32 `[N]` (index in
    MODULATIONS), int32 `[N]`.

  Raises:
    DataError: not a dict, unknown modulation, non-int SNR or a value not
      shaped `[n, 2, 128]` (see `check_layout`).
  """
  check_layout(data, where=where)
  keys = sorted(data, key=lambda k: (k[0], int(k[1])))
  signals = np.concatenate([data[k] for k in keys]).astype(np.float32,
                                                           copy=False)
  counts = [len(data[k]) for k in keys]
  labels = np.repeat([MODULATIONS.index(k[0]) for k in keys], counts)
  snrs = np.repeat([int(k[1]) for k in keys], counts)
  return signals, labels.astype(np.int32), snrs.astype(np.int32)


def stratified_split(labels, snrs, *, seed: int, train_fraction: float = 0.5
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Seeded train/test split, stratified by (label, snr).

  Every group of n examples sends exactly round(n * train_fraction) (numpy
  rounding) to train, chosen uniformly by `default_rng(seed)`.

  Returns:
    `(train_idx, test_idx)`: sorted int64 arrays, disjoint, covering
    `range(N)`.
  """
  labels, snrs = np.asarray(labels), np.asarray(snrs)
  if labels.ndim != 1 or labels.shape != snrs.shape:
    raise ValueError(f'labels {labels.shape} and snrs {snrs.shape} must be '
                     'equal-length vectors.')
  if not 0 <= train_fraction <= 1:
    raise ValueError(f'train_fraction={train_fraction} must be in [0, 1].')
  _, group = np.unique(np.stack([labels, snrs], 1), axis=0,
                       return_inverse=True)
  group = group.ravel()
  order = np.lexsort((np.random.default_rng(seed).random(len(group)), group))
  sizes = np.bincount(group)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  rank = np.empty(len(group), np.int64)
  rank[order] = np.arange(len(group)) - starts[group[order]]
  is_train = rank < np.round(sizes * train_fraction)[group]
  return np.flatnonzero(is_train), np.flatnonzero(~is_train)


def _cache_path(cache_dir, num_per_key, seed, modulations, snrs, am_ssb):
  spec = repr((tuple(modulations), tuple(int(s) for s in snrs)))
  digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
  return os.path.join(cache_dir, f'amc_synth_v{_FORMAT_VERSION}_n{num_per_key}'
                      f'_seed{seed}_ssb-{am_ssb}_{digest}.npz')


def _read_cache(path: str, expected: int):
  try:
    with np.load(path, allow_pickle=False) as archive:
      signals, labels = archive['signals'], archive['labels']
      snrs = archive['snrs']
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Regenerating: cannot read cache %s (%s: %s).', path,
                    type(e).__name__, e)
    return None
  if (signals.shape != (expected, 2, SAMPLES) or signals.dtype != np.float32
      or labels.shape != (expected,) or snrs.shape != (expected,)):
    logging.warning('Regenerating: cache %s has unexpected arrays.', path)
    return None
  return signals, labels.astype(np.int32), snrs.astype(np.int32)


def cached_generate(cache_dir: str, num_per_key: int, seed: int, **kwargs
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`to_arrays(generate(num_per_key, seed, **kwargs))`, cached as an npz.

  The file name holds the format version and every parameter, so a changed
  recipe or argument never reads a stale file. An unreadable or truncated
  file is regenerated; writes go to a temporary file renamed into place, so
  concurrent or interrupted runs never leave a partial cache.

  Args:
    cache_dir: folder for the cache (created if missing).
    num_per_key: as in `generate`.
    seed: as in `generate`.
    **kwargs: `modulations`, `snrs`, `am_ssb` of `generate`.

  Returns:
    `(signals, labels, snrs)` as from `to_arrays`.
  """
  unknown = set(kwargs) - {'modulations', 'snrs', 'am_ssb'}
  if unknown:
    raise TypeError(f'cached_generate got unexpected arguments {unknown}.')
  modulations = tuple(kwargs.get('modulations', MODULATIONS))
  snrs = tuple(kwargs.get('snrs', SNRS))
  am_ssb = kwargs.get('am_ssb', 'correct')
  _check_args(num_per_key, seed, modulations, snrs, am_ssb)
  path = _cache_path(cache_dir, num_per_key, seed, modulations, snrs, am_ssb)
  expected = len(modulations) * len(snrs) * num_per_key
  if os.path.exists(path):
    arrays = _read_cache(path, expected)
    if arrays is not None:
      return arrays
  signals, labels, snr_values = to_arrays(generate(
      num_per_key, seed, modulations=modulations, snrs=snrs, am_ssb=am_ssb))
  os.makedirs(cache_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix='.npz.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, signals=signals, labels=labels, snrs=snr_values)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  logging.info('Wrote %d synthetic AMC examples to %s.', expected, path)
  return signals, labels, snr_values
