"""Tests for the TF-free metric writers.

The TensorBoard event file is checked with an independent reader written
here (bitwise CRC32C, hand-decoded protobuf), and, only where the
`tensorboard` package is installed, with TensorBoard's own loader.
"""

import glob
import json
import math
import os
import struct

import pytest

from jard import metric_writers


def _bitwise_crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return ~crc & 0xFFFFFFFF


def _masked(data: bytes) -> int:
  crc = _bitwise_crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % (1 << 32)


def _read_tfrecords(path):
  """Yields the records of a TFRecord file, checking both CRCs."""
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack('<Q', header)
    (length_crc,) = struct.unpack('<I', data[pos + 8:pos + 12])
    assert length_crc == _masked(header)
    record = data[pos + 12:pos + 12 + length]
    assert len(record) == length
    (data_crc,) = struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])
    assert data_crc == _masked(record)
    pos += 16 + length
    yield record


def _read_varint(buf, pos):
  result, shift = 0, 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return result, pos


def _fields(buf):
  """Decodes a protobuf message into a list of (field, value)."""
  out, pos = [], 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise AssertionError(f'Unexpected wire type {wire}.')
    out.append((field, wire, value))
  return out


def _decode_event(record):
  """Returns {'wall_time', 'step', 'file_version', 'scalars'} of an Event."""
  event = {'scalars': {}}
  for field, wire, value in _fields(record):
    if field == 1:
      assert wire == 1
      (event['wall_time'],) = struct.unpack('<d', value)
    elif field == 2:
      assert wire == 0
      event['step'] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3:
      assert wire == 2
      event['file_version'] = value.decode('utf-8')
    elif field == 5:
      assert wire == 2
      for v_field, v_wire, v in _fields(value):
        assert (v_field, v_wire) == (1, 2)
        parts = {f: (w, x) for f, w, x in _fields(v)}
        assert parts[1][0] == 2 and parts[2][0] == 5
        (simple_value,) = struct.unpack('<f', parts[2][1])
        event['scalars'][parts[1][1].decode('utf-8')] = simple_value
    else:
      raise AssertionError(f'Unexpected Event field {field}.')
  return event


def _write_run(logdir):
  writer = metric_writers.create_default_writer(logdir)
  writer.write_hparams({'lr': 0.1, 'model': 'wrn-28-10', 'steps': [1, 2]})
  writer.write_scalars(1, {'loss': 2.5, 'accuracy': 0.125})
  writer.write_scalars(2, {'loss': 1.25})
  writer.write_texts(2, {'note': 'hello'})
  writer.write_scalars(3, {'loss': 0.5, 'accuracy': 0.75})
  writer.flush()
  writer.close()


def test_crc32c_test_vector():
  assert _bitwise_crc32c(b'123456789') == 0xE3069283
  assert metric_writers.crc32c(b'123456789') == 0xE3069283
  for data in (b'', b'\x00' * 32, bytes(range(256))):
    assert metric_writers.crc32c(data) == _bitwise_crc32c(data)


def test_jsonl_round_trip_with_truncated_last_line(tmp_path):
  logdir = str(tmp_path)
  _write_run(logdir)
  expected = {'loss': [(1, 2.5), (2, 1.25), (3, 0.5)],
              'accuracy': [(1, 0.125), (3, 0.75)]}
  assert metric_writers.read_scalars(logdir) == expected

  path = os.path.join(logdir, 'metrics.jsonl')
  with open(path, encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert len(lines) == 3
  first = json.loads(lines[0])
  assert list(first) == ['step', 'time', 'loss', 'accuracy']
  assert first['step'] == 1 and isinstance(first['time'], float)

  with open(path, 'a', encoding='utf-8') as f:  # A run killed mid-write.
    f.write('{"step": 4, "time": 1.0, "loss": 0.2')
  assert metric_writers.read_scalars(logdir) == expected

  # A resumed run starts a new line rather than extending the broken one.
  writer = metric_writers.JsonlWriter(logdir)
  writer.write_scalars(4, {'loss': 0.25})
  writer.close()
  assert metric_writers.read_scalars(logdir)['loss'][-1] == (4, 0.25)


def test_jsonl_reserved_names_and_non_finite(tmp_path):
  writer = metric_writers.JsonlWriter(str(tmp_path))
  with pytest.raises(ValueError):
    writer.write_scalars(1, {'step': 1.0})
  writer.write_scalars(1, {'loss': float('nan')})
  writer.close()
  [(step, value)] = metric_writers.read_scalars(str(tmp_path))['loss']
  assert step == 1 and math.isnan(value)


def test_hparams_and_texts_written(tmp_path):
  logdir = str(tmp_path)
  _write_run(logdir)
  with open(os.path.join(logdir, 'hparams.json'), encoding='utf-8') as f:
    assert json.load(f) == {'lr': 0.1, 'model': 'wrn-28-10', 'steps': [1, 2]}
  with open(os.path.join(logdir, 'texts.jsonl'), encoding='utf-8') as f:
    [text] = [json.loads(line) for line in f]
  assert text['step'] == 2 and text['note'] == 'hello'


def test_tensorboard_event_file(tmp_path):
  logdir = str(tmp_path)
  _write_run(logdir)
  [path] = glob.glob(os.path.join(logdir, 'events.out.tfevents.*.jard'))
  events = [_decode_event(r) for r in _read_tfrecords(path)]
  assert len(events) == 4
  assert events[0]['file_version'] == 'brain.Event:2'
  assert not events[0]['scalars']
  assert all('file_version' not in e for e in events[1:])
  assert all(e['wall_time'] > 1e9 for e in events)
  assert [e['step'] for e in events[1:]] == [1, 2, 3]
  assert events[1]['scalars'] == {'loss': 2.5, 'accuracy': 0.125}
  assert events[2]['scalars'] == {'loss': 1.25}
  assert events[3]['scalars'] == {'loss': 0.5, 'accuracy': 0.75}


def test_tensorboard_float32_and_large_steps(tmp_path):
  writer = metric_writers.TensorBoardWriter(str(tmp_path))
  writer.write_scalars(2**40, {'x': 0.1, 'big': 1e300, 'neg': -1e300})
  writer.write_scalars(-1, {'x': 1.0})
  writer.close()
  events = [_decode_event(r) for r in _read_tfrecords(writer.path)]
  assert events[1]['step'] == 2**40
  assert events[1]['scalars']['x'] == struct.unpack(
      '<f', struct.pack('<f', 0.1))[0]
  assert events[1]['scalars']['big'] == math.inf
  assert events[1]['scalars']['neg'] == -math.inf
  assert events[2]['step'] == -1


def test_logging_writer(tmp_path, caplog):
  logdir = str(tmp_path / 'unused')
  writer = metric_writers.create_default_writer(logdir, just_logging=True)
  assert isinstance(writer, metric_writers.LoggingWriter)
  with caplog.at_level('INFO'):
    writer.write_scalars(7, {'loss': 0.5, 'step_count': 3})
    writer.write_texts(7, {'note': 'hi'})
  assert '[7] loss=0.5, step_count=3' in caplog.text
  assert '[7] note: hi' in caplog.text
  assert not os.path.exists(logdir)


def test_tensorboard_loader_reads_event_file(tmp_path):
  loader_lib = pytest.importorskip(
      'tensorboard.backend.event_processing.event_file_loader')
  logdir = str(tmp_path)
  _write_run(logdir)
  [path] = glob.glob(os.path.join(logdir, 'events.out.tfevents.*.jard'))
  tensor_util = pytest.importorskip('tensorboard.util.tensor_util')
  events = list(loader_lib.EventFileLoader(path).Load())
  assert events[0].file_version == 'brain.Event:2'

  def value_of(v):  # The loader migrates simple_value to a scalar tensor.
    if v.WhichOneof('value') == 'tensor':
      return float(tensor_util.make_ndarray(v.tensor))
    return v.simple_value

  scalars = [(e.step, v.tag, value_of(v))
             for e in events[1:] for v in e.summary.value]
  assert scalars == [(1, 'loss', 2.5), (1, 'accuracy', 0.125),
                     (2, 'loss', 1.25), (3, 'loss', 0.5), (3, 'accuracy', 0.75)]
