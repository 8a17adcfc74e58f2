"""Metric writers with clu's interface and no TensorFlow.

jard does not use `clu.metric_writers`: in clu 0.0.12 importing that package
imports TensorFlow (for its `SummaryWriter`), and TensorFlow is not a
dependency of jard. The writers here implement the part of clu's
`MetricWriter` interface that jard uses (`write_scalars`, `write_texts`,
`write_hparams`, `flush`, `close`) with the same signatures, so switching back
to clu is one line: `from clu import metric_writers` in place of
`from jard import metric_writers`.

`create_default_writer` gives, on the main process, a `MultiWriter` of

* `LoggingWriter`: absl `logging.info` lines in clu's format;
* `JsonlWriter`: `<logdir>/metrics.jsonl`, one JSON object
  `{"step": s, "time": wall_time, "name": value, ...}` per `write_scalars`
  call, read back by `read_scalars` (and by notebooks and plots, so its keys
  are stable), and `<logdir>/hparams.json`;
* `TensorBoardWriter`: a TensorBoard event file whose `Event` protos and
  TFRecord framing are encoded by hand (no TensorFlow, no protobuf).

All files are written with the standard library, so `logdir` must be a local
(or locally mounted) path.
"""

import abc
import json
import math
import os
import socket
import struct
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging

METRICS_FILE = 'metrics.jsonl'
TEXTS_FILE = 'texts.jsonl'
HPARAMS_FILE = 'hparams.json'
_RESERVED_KEYS = ('step', 'time')


class MetricWriter(abc.ABC):
  """Writes scalars, texts and hyperparameters; clu's interface."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    """Writes scalar values (e.g. `{'loss': 0.3}`) for a training step."""

  @abc.abstractmethod
  def write_texts(self, step: int, texts: Mapping[str, str]):
    """Writes text values for a training step."""

  @abc.abstractmethod
  def write_hparams(self, hparams: Mapping[str, Any]):
    """Writes the hyperparameters of the run (once, at its start)."""

  def flush(self):
    """Makes everything written so far durable."""

  def close(self):
    """Flushes and releases resources; the writer is unusable afterwards."""


class LoggingWriter(MetricWriter):
  """Writes to the absl log, in clu's `LoggingWriter` format."""

  def __init__(self, collection: str = ''):
    self._collection_str = f' collection={collection}' if collection else ''

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    values = [f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
              for k, v in sorted(scalars.items())]
    logging.info('[%d]%s %s', step, self._collection_str, ', '.join(values))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for key, value in texts.items():
      logging.info('[%d]%s %s: %s', step, self._collection_str, key, value)

  def write_hparams(self, hparams: Mapping[str, Any]):
    logging.info('[Hyperparameters]%s %s', self._collection_str, hparams)


def _fsync(f) -> None:
  f.flush()
  os.fsync(f.fileno())


def _ends_mid_line(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    if not f.tell():
      return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b'\n'


class JsonlWriter(MetricWriter):
  """Appends scalars to `<logdir>/metrics.jsonl`, one JSON object a call.

  Each line is `{"step": s, "time": wall_time, "name": value, ...}`; scalar
  names `step` and `time` are therefore reserved. Non-finite values are
  written as `NaN`/`Infinity`, which Python's `json` reads back. Texts go to
  `<logdir>/texts.jsonl` in the same shape; hyperparameters to
  `<logdir>/hparams.json` (replaced atomically on each call; values JSON
  cannot represent are written as their `str`).
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self._logdir = logdir
    path = os.path.join(logdir, METRICS_FILE)
    self._metrics = open(path, 'a', encoding='utf-8')
    if _ends_mid_line(path):  # A killed run's partial line: end it first.
      self._metrics.write('\n')
    self._texts = None

  def _record(self, step: int, values: Mapping[str, Any]) -> str:
    for key in values:
      if key in _RESERVED_KEYS:
        raise ValueError(f'Metric name {key!r} is reserved in {METRICS_FILE}.')
    record = {'step': int(step), 'time': time.time(), **values}
    return json.dumps(record) + '\n'

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    self._metrics.write(
        self._record(step, {k: float(v) for k, v in scalars.items()}))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    if self._texts is None:
      self._texts = open(os.path.join(self._logdir, TEXTS_FILE), 'a',
                         encoding='utf-8')
    self._texts.write(self._record(step, {k: str(v) for k, v in texts.items()}))

  def write_hparams(self, hparams: Mapping[str, Any]):
    path = os.path.join(self._logdir, HPARAMS_FILE)
    tmp = f'{path}.tmp.{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
      json.dump(dict(hparams), f, indent=2, sort_keys=True, default=str)
      f.write('\n')
      _fsync(f)
    os.replace(tmp, path)

  def flush(self):
    for f in (self._metrics, self._texts):
      if f is not None and not f.closed:
        _fsync(f)

  def close(self):
    self.flush()
    for f in (self._metrics, self._texts):
      if f is not None:
        f.close()


def _crc32c_table() -> Tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC32C (Castagnoli), as used by TFRecord framing."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # Negative int64 as ten bytes, like protobuf.
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
  try:
    return struct.pack('<f', value)
  except OverflowError:  # Finite doubles beyond float32's range.
    return struct.pack('<f', math.copysign(math.inf, value))


def _event(wall_time: float, step: int, *, file_version: str = '',
           scalars: Optional[Mapping[str, float]] = None) -> bytes:
  """Encodes a `tensorflow.Event` proto."""
  out = b'\x09' + struct.pack('<d', wall_time) + b'\x10' + _varint(step)
  if file_version:
    out += _length_delimited(3, file_version.encode('utf-8'))
  if scalars:
    summary = b''.join(
        _length_delimited(1, _length_delimited(1, tag.encode('utf-8')) +
                          b'\x15' + _float32(float(value)))
        for tag, value in scalars.items())
    out += _length_delimited(5, summary)
  return out


def _tfrecord(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', _masked_crc(length)) + data +
          struct.pack('<I', _masked_crc(data)))


class TensorBoardWriter(MetricWriter):
  """Writes scalars to a TensorBoard event file, without TensorFlow.

  The file is `<logdir>/events.out.tfevents.<time>.<hostname>.jard`: TFRecord
  framing of hand-encoded `Event` protos, the first carrying
  `file_version='brain.Event:2'` and the rest one `Summary` of
  `simple_value` scalars (float32) per `write_scalars` call. Only scalars are
  written: `write_texts` and `write_hparams` do nothing here (texts and
  hyperparameters are in the JSONL files and the log).
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f'events.out.tfevents.{int(now):010d}.{socket.gethostname()}.jard'
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    self._file.write(_tfrecord(_event(now, 0, file_version='brain.Event:2')))

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    if scalars:
      self._file.write(
          _tfrecord(_event(time.time(), int(step), scalars=scalars)))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    del step, texts  # Not written to TensorBoard; see the class docstring.

  def write_hparams(self, hparams: Mapping[str, Any]):
    del hparams  # Not written to TensorBoard; see the class docstring.

  def flush(self):
    if not self._file.closed:
      _fsync(self._file)

  def close(self):
    self.flush()
    self._file.close()


class MultiWriter(MetricWriter):
  """Writes to each of several writers, in order."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self._writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    for w in self._writers:
      w.write_texts(step, texts)

  def write_hparams(self, hparams: Mapping[str, Any]):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_default_writer(logdir: str, *,
                          just_logging: bool = False) -> MetricWriter:
  """The log, JSONL and TensorBoard writers; just the log if `just_logging`.

  Args:
    logdir: Directory for `metrics.jsonl`, `hparams.json` and the event file.
    just_logging: Only log (pass `jax.process_index() > 0`, so that one
      process writes files).

  Returns:
    The writer.
  """
  if just_logging:
    return LoggingWriter()
  return MultiWriter([LoggingWriter(), JsonlWriter(logdir),
                      TensorBoardWriter(logdir)])


def read_scalars(logdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """Reads `<logdir>/metrics.jsonl` as `{name: [(step, value), ...]}`.

  Lines that do not parse (such as the last line of a killed run) are
  skipped. Steps are in file order, so a resumed run may repeat some.

  Args:
    logdir: Directory a `JsonlWriter` wrote to.

  Returns:
    For each scalar name, its (step, value) pairs.
  """
  out: Dict[str, List[Tuple[int, float]]] = {}
  with open(os.path.join(logdir, METRICS_FILE), encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
        step = int(record['step'])
        values = [(k, float(v)) for k, v in record.items()
                  if k not in _RESERVED_KEYS]
      except (ValueError, TypeError, KeyError, AttributeError):
        continue
      for name, value in values:
        out.setdefault(name, []).append((step, value))
  return out
