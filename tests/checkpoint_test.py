"""Checkpoints: keep-N latest, best by metric, restore onto a target."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jard import checkpoint
from jard import parallel


def _state(value):
  return {'step': jnp.asarray(value, jnp.int32),
          'params': {'w': jnp.full((3,), float(value))}}


def test_keep_latest_n_and_best_by_metric(tmp_path):
  ckpt = checkpoint.Checkpoints(str(tmp_path), keep=2, metric='pgd',
                                async_save=False)
  accuracies = {1: 0.2, 2: 0.5, 3: 0.3, 4: 0.1}
  for step, acc in accuracies.items():
    ckpt.save(step, _state(step), {'pgd': acc, 'clean': 0.9})
  ckpt.save(5, _state(5))  # a periodic save without metrics
  ckpt.wait()
  assert ckpt.latest.all_steps() == [4, 5]
  assert ckpt.latest_step() == 5
  restored = ckpt.restore_latest(_state(0))
  np.testing.assert_array_equal(restored['params']['w'], [5.0] * 3)
  best_step, best = ckpt.restore_best(_state(0))
  assert best_step == 2
  np.testing.assert_array_equal(best['params']['w'], [2.0] * 3)
  ckpt.close()
  # A fresh manager (a resumed run) sees the same checkpoints.
  again = checkpoint.Checkpoints(str(tmp_path), keep=2, metric='pgd')
  assert again.latest_step() == 5
  assert again.restore_best(_state(0))[0] == 2
  again.close()
  assert int(checkpoint.load_latest(str(tmp_path), _state(0))['step']) == 5


def test_empty_directory_restores_nothing(tmp_path):
  ckpt = checkpoint.Checkpoints(str(tmp_path), metric='pgd')
  assert ckpt.restore_latest(_state(0)) is None
  assert ckpt.restore_best(_state(0)) is None
  ckpt.close()


def test_replicated_and_sharded_arrays_restore_whole_onto_the_target(tmp_path):
  """A replicated array is saved from one device's copy (fast), a sharded
  one as a whole; both restore exactly, with the target's layout."""
  mesh = parallel.make_mesh()
  n = len(jax.devices())
  state = {
      'replicated': jax.device_put(np.arange(6.0), NamedSharding(mesh, P())),
      'sharded': jax.device_put(np.arange(2.0 * n).reshape(n, 2),
                                NamedSharding(mesh, P(parallel.AXIS))),
  }
  ckpt = checkpoint.Checkpoints(str(tmp_path))
  ckpt.save(1, state)
  ckpt.wait()
  restored = ckpt.restore_latest(state)
  ckpt.close()
  for name, array in state.items():
    np.testing.assert_array_equal(restored[name], array)
    assert restored[name].sharding == array.sharding, name
