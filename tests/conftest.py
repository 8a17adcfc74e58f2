"""Test setup: 8 forced CPU devices and fast compiles, before JAX starts."""

import gc
import os
import sys
import tempfile

# LLVM optimisation level 1 instead of XLA's default: the suite's end-to-end
# tests ~20% faster (fewer seconds compiling; the convolutions still run in
# XLA:CPU's library kernels), with bit-identical numbers on the checked
# programs (`models_test` compares init at level 0 with level 3 explicitly).
# Level 0 is no option: it made one end-to-end test 10x slower.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=1')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Note: `jax_disable_most_optimizations` is *not* set. It makes compiles
# faster but runs attack loops ~30x slower (PGD-20 on 32 CIFAR images: 126 s
# instead of 4.5 s), which costs far more than it saves here.
# A persistent compilation cache, fresh for each run and private to each
# xdist worker (two workers never write one directory): the same programs
# (the :quick teachers' recipes, evaluation attacks) recur across test
# modules, and `jax.clear_caches()` after each module (below) would otherwise
# compile them again. Compile time dominates this suite.
jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(
    prefix=f'jard_test_cache_{os.environ.get("PYTEST_XDIST_WORKER", "main")}_'))
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


@pytest.fixture(scope='module', autouse=True)
def _release_compiled_executables():
  """Frees every compiled executable after each test module.

  Each XLA:CPU executable holds ~4 memory mappings until its jit cache entry
  goes. The whole suite in one process compiles ~15k of them, which reaches
  the kernel's `vm.max_map_count` (65530); the next compile then segfaults
  inside LLVM (seen in CI at evaluate_test, test 287 of 454).
  """
  yield
  jax.clear_caches()
  gc.collect()
