"""Bad configs and bad data fail fast, with one clear message naming the field.

Each case runs `jard.pipeline.run` on `configs/pgd_at.py:quick` with a small
npz dataset and checks that the error is raised before JAX traces or compiles
anything (counted through `jax.monitoring`'s compile events and wrappers around
`jax.jit` / `jax.pmap` / `jax.shard_map`) and before the train stage starts.
The CLI is checked to print the message without a traceback.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import pgd_at
from jard import data
from jard import models
from jard import pipeline
from jard import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def npz_spec(tmp_path_factory):
  path = tmp_path_factory.mktemp('data') / 'small.npz'
  rng = np.random.default_rng(0)
  np.savez(path, image=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
           label=rng.integers(0, 10, (64,)))
  return f'npz:{path}'


@pytest.fixture
def config(npz_spec):
  cfg = pgd_at.get_config('quick')
  cfg.dataset.train = npz_spec
  cfg.dataset.test = npz_spec
  return cfg


@pytest.fixture
def compiles(monkeypatch):
  """Counts traces/compiles and jit/pmap/shard_map calls during a test."""
  events = []

  def on_event(event, duration, **kwargs):
    del duration, kwargs
    if event.startswith('/jax/core/compile/'):
      events.append(event)

  def counting(name, fn):
    def wrapper(*args, **kwargs):
      events.append(name)
      return fn(*args, **kwargs)
    return wrapper

  for name in ('jit', 'pmap', 'shard_map'):
    if hasattr(jax, name):
      monkeypatch.setattr(jax, name, counting(name, getattr(jax, name)))
  jax.monitoring.register_event_duration_secs_listener(on_event)
  yield events
  jax.monitoring.unregister_event_duration_listener(on_event)


def test_compile_counter_works(compiles):
  # Positive control: the counter sees a fresh compile.
  jax.jit(lambda x: x * 3 + 1)(np.float32(2.0))
  assert 'jit' in compiles
  assert '/jax/core/compile/backend_compile_duration' in compiles


def _run_fails(cfg, workdir, compiles, error):
  with pytest.raises(error) as info:
    pipeline.run(cfg, str(workdir))
  assert not compiles, f'compiled before failing: {compiles}'
  assert not os.path.exists(os.path.join(workdir, 'train'))
  message = str(info.value)
  assert '\n' not in message.strip(), message
  return message


def _config_fails(cfg, workdir, compiles):
  message = _run_fails(cfg, workdir, compiles, validation.ConfigError)
  # Config checks come before the workdir is even written.
  assert not os.path.exists(workdir)
  return message


def test_unknown_model(config, tmp_path, compiles):
  config.model.name = 'nope'
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.model.name' in message and "'nope'" in message
  assert str(sorted(models.MODELS)) in message


def test_unknown_compute_dtype(config, tmp_path, compiles):
  config.compute_dtype = 'float16'
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.compute_dtype' in message and 'bfloat16' in message


def test_unknown_method(config, tmp_path, compiles):
  config.method.name = 'nope'
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.method.name' in message and "'nope'" in message


def test_negative_train_eps(config, tmp_path, compiles):
  config.attack.train.eps = -0.1
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.attack.train.eps' in message and '>= 0' in message


def test_negative_eval_epsilon(config, tmp_path, compiles):
  config.eval.epsilon = -0.1
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.eval.epsilon' in message


def test_unknown_eval_attack(config, tmp_path, compiles):
  config.eval.attacks = 'clean,nope'
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.eval.attacks' in message and 'nope' in message


def test_batch_size_not_divisible_by_devices(config, tmp_path, compiles):
  assert jax.device_count() == 8
  config.batch_size = 12
  message = _config_fails(config, tmp_path / 'w', compiles)
  assert 'config.batch_size=12' in message and '8 devices' in message
  config.batch_size = 32
  config.eval.batch_size = 20
  message = _config_fails(config, tmp_path / 'w2', compiles)
  assert 'config.eval.batch_size=20' in message


def test_npz_wrong_shape(config, tmp_path, compiles):
  path = tmp_path / 'nchw.npz'
  np.savez(path, image=np.zeros((8, 3, 32, 32), np.uint8),
           label=np.zeros(8, np.int64))
  config.dataset.train = f'npz:{path}'
  message = _run_fails(config, tmp_path / 'w', compiles, data.DataError)
  assert 'config.dataset.train' in message and 'NHWC' in message


def test_npz_labels_out_of_range(config, tmp_path, compiles):
  path = tmp_path / 'labels.npz'
  np.savez(path, image=np.zeros((8, 32, 32, 3), np.uint8),
           label=np.arange(8) * 2)  # up to 14 with 10 classes
  config.dataset.test = f'npz:{path}'
  message = _run_fails(config, tmp_path / 'w', compiles, data.DataError)
  assert 'config.dataset.test' in message
  assert 'config.dataset.num_classes' in message and 'labels' in message


def test_npz_missing_path(config, tmp_path, compiles):
  config.dataset.train = f'npz:{tmp_path}/nonexistent.npz'
  message = _run_fails(config, tmp_path / 'w', compiles, data.DataError)
  assert 'config.dataset.train' in message and 'does not exist' in message


def _cli(workdir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/pgd_at.py:quick',
       f'--workdir={workdir}', *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
      check=False)


def test_cli_unknown_model(tmp_path):
  result = _cli(tmp_path / 'w', '--config.model.name=nope')
  assert result.returncode != 0
  assert 'config.model.name' in result.stderr, result.stderr
  assert str(sorted(models.MODELS)) in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_cli_missing_npz(tmp_path):
  result = _cli(tmp_path / 'w',
                f'--config.dataset.train=npz:{tmp_path}/nonexistent.npz')
  assert result.returncode != 0
  assert 'config.dataset.train' in result.stderr, result.stderr
  assert 'does not exist' in result.stderr, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  assert not os.path.exists(tmp_path / 'w' / 'train')
