"""Orbax checkpointing: latest-N for resuming, and the best by a metric.

One `Checkpoints` object per training stage, under `<stage_dir>/checkpoints`
(the latest `keep` saves) and `<stage_dir>/best` (the single best save by
`metric`). Everything that determines the rest of a run is in the saved
`TrainState`: the step (hence the epoch, the data position and every PRNG
key, which are derived from it), the parameters, BatchNorm statistics, the
optimizer state and the method state. Saves are atomic (Orbax writes to a
temporary directory and renames), so a run killed during a save resumes from
the previous complete checkpoint; they are asynchronous in a single process
and synchronous across processes.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


def _abstract(tree: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _one_copy(x):
  """One device's copy of a replicated array (anything else unchanged).

  Orbax first slices a replicated array into per-device pieces with eager
  ops: for ResNet-8's state on 8 devices, 0.5 s a save and ~5 s of compiles
  at the first, against 0.1 s for the single copy. The restore target's
  sharding decides the layout on restore either way.
  """
  if isinstance(x, jax.Array) and x.sharding.is_fully_replicated:
    return x.addressable_data(0)
  return x


class Checkpoints:
  """Latest-N and best-by-metric checkpoint managers of one stage."""

  def __init__(self, directory: str, *, keep: int = 2,
               metric: Optional[str] = None, mode: str = 'max',
               async_save: Optional[bool] = None):
    directory = os.path.abspath(directory)
    if async_save is None:
      # Multi-process runs save synchronously: Orbax's async saves meet the
      # other processes at barriers from a background thread, and one CI
      # run of the 2-process test hung there (process 0 waiting for its
      # save to finish, process 1 timing out at the shutdown barrier; cause
      # not found). Synchronous saves meet in lockstep on the main thread.
      async_save = jax.process_count() == 1
    self.latest = ocp.CheckpointManager(
        os.path.join(directory, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True))
    self.metric = metric
    self.best = None
    if metric:
      self.best = ocp.CheckpointManager(
          os.path.join(directory, 'best'),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, best_fn=lambda m: m[metric], best_mode=mode,
              keep_checkpoints_without_metrics=False,
              enable_async_checkpointing=async_save, create=True))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state: PyTree,
           metrics: Optional[dict] = None) -> None:
    """Saves `state` at `step`; also offers it to the best manager."""
    if jax.process_count() > 1:
      # `pmap` returns arrays on this process's devices only; as global
      # (replicated) arrays Orbax writes each of them once.
      state = jax.tree.map(
          ocp.utils.fully_replicated_host_local_array_to_global_array, state)
    else:
      state = jax.tree.map(_one_copy, state)
    if self.latest.latest_step() != step:
      self.latest.save(step, args=ocp.args.StandardSave(state))
    if self.best is not None and metrics and self.metric in metrics:
      if step not in self.best.all_steps():
        self.best.save(step, args=ocp.args.StandardSave(state),
                       metrics={k: float(v) for k, v in metrics.items()})

  def restore_latest(self, target: PyTree) -> Optional[PyTree]:
    """The latest state restored onto `target`'s structure, or None."""
    step = self.latest.latest_step()
    if step is None:
      return None
    logging.info('Restoring checkpoint of step %d from %s.', step,
                 self.latest.directory)
    return self.latest.restore(
        step, args=ocp.args.StandardRestore(_abstract(target)))

  def restore_best(self, target: PyTree) -> Optional[tuple[int, PyTree]]:
    """`(step, state)` of the best save, or None when there is none."""
    if self.best is None:
      return None
    self.best.wait_until_finished()
    step = self.best.best_step()
    if step is None:
      return None
    return step, self.best.restore(
        step, args=ocp.args.StandardRestore(_abstract(target)))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()


def load_latest(directory: str, target: PyTree) -> PyTree:
  """Restores a stage's latest saved state read-only (e.g. a teacher)."""
  ckpt = Checkpoints(directory)
  try:
    state = ckpt.restore_latest(target)
  finally:
    ckpt.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint under {directory!r}.')
  return state


def variables_restore_args(model, input_shape) -> ocp.args.PyTreeRestore:
  """Restore args that read only `params` and `batch_stats` of a saved state.

  Evaluation and frozen teachers need the model variables, not the
  optimizer or method state, so the rest of the `TrainState` is skipped.
  """
  abstract = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jax.numpy.zeros((1,) + tuple(input_shape)),
      train=False))
  target = _abstract({'params': abstract['params'],
                      'batch_stats': abstract.get('batch_stats', {})})
  # As host NumPy arrays: whatever device topology saved them (e.g. several
  # processes), they load on this one.
  return ocp.args.PyTreeRestore(
      item=target,
      restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target),
      partial_restore=True)
