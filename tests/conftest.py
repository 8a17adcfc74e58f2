"""Test setup: 8 forced CPU devices and fast compiles, before JAX starts."""

import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Note: `jax_disable_most_optimizations` is *not* set. It makes compiles
# faster but runs attack loops ~30x slower (PGD-20 on 32 CIFAR images: 126 s
# instead of 4.5 s), which costs far more than it saves here.
# Pipeline tests build the same steps in several runs (resume, rerun): a
# persistent cache lets identical programs compile once per test session.
# One directory per session: a local run that shared the directory with
# earlier and concurrent runs segfaulted reading a cached executable.
jax.config.update('jax_compilation_cache_dir',
                  tempfile.mkdtemp(prefix='jard_test_jax_cache_'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

# `configs` is a top-level folder of the repository, imported by tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session', name='npz_path')
def npz_fixture(tmp_path_factory):
  """A tiny random 32×32 image set (96 images, 10 classes) as an npz file."""
  rng = np.random.default_rng(0)
  path = str(tmp_path_factory.mktemp('data') / 'tiny.npz')
  np.savez(path, image=rng.integers(0, 256, (96, 32, 32, 3), np.uint8),
           label=rng.integers(0, 10, (96,)))
  return path
