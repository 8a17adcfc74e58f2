"""Run one per-device SPMD function under `jax.pmap` or `jax.shard_map`.

Steps are written once, per device, against the mapped axis `AXIS`:
`lax.pmean` for gradients and metrics, BatchNorm with `axis_name=AXIS`, and
`lax.axis_index(AXIS)` to locate the device's rows in the global batch.
`compile_spmd` runs such a function

* `'pmap'` (default): `jax.pmap` with replicated arguments unmapped
  (`in_axes=None`) and the batch mapped over leading device dimension, the
  layout the Flax ImageNet example uses;
* `'shard_map'`: `jax.jit(jax.shard_map(...))` on a 1-D mesh over all devices,
  with replicated arguments as `P()` and the batch as `P(AXIS)`.

Both give the same numbers. Batches cross from host memory with
`shard_batch`, and per-example outputs come back with `to_host`.
"""

import contextlib
from typing import Callable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = 'batch'
MODES = ('pmap', 'shard_map')


Devices = Optional[Sequence[jax.Device]]


def make_mesh(devices: Devices = None) -> jax.sharding.Mesh:
  """A 1-D mesh, axis `AXIS`, over `devices` (default: all, all processes)."""
  return jax.sharding.Mesh(np.asarray(devices or jax.devices()), (AXIS,))


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f'config.parallel={mode!r}; choose one of {MODES}.')


def compile_spmd(fn: Callable, *, mode: str, sharded_in: Sequence[bool],
                 sharded_out, donate_argnums: tuple[int, ...] = (),
                 devices: Devices = None):
  """Compiles per-device `fn` for all devices.

  Args:
    fn: per-device function of positional arguments.
    mode: `'pmap'` or `'shard_map'`.
    sharded_in: per positional argument, True when it is split over devices
      along its leading axis (batches), False when replicated (state, keys).
    sharded_out: a pytree prefix of the outputs with the same meaning.
    donate_argnums: arguments whose buffers the caller gives up.
    devices: the devices to run on (default: all).

  Returns:
    The compiled callable. Under `'pmap'` sharded arguments are
    `[devices, per_device, ...]`; under `'shard_map'` they are global
    `[batch, ...]` arrays (see `shard_batch`).
  """
  check_mode(mode)
  if mode == 'pmap':
    in_axes = tuple(0 if s else None for s in sharded_in)
    out_axes = jax.tree.map(lambda s: 0 if s else None, sharded_out)
    return jax.pmap(fn, axis_name=AXIS, in_axes=in_axes, out_axes=out_axes,
                    donate_argnums=donate_argnums, devices=devices)
  mesh = make_mesh(devices)
  in_specs = tuple(P(AXIS) if s else P() for s in sharded_in)
  out_specs = jax.tree.map(lambda s: P(AXIS) if s else P(), sharded_out)
  # check_vma=False keeps pmap's semantics: a gradient with respect to a
  # replicated argument is the *local* gradient, which the step then
  # `pmean`s itself. (With vma checking, JAX would insert a psum when
  # transposing the implicit broadcast, and the explicit pmean would then
  # scale the gradient by the device count.)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


def shard_batch(batch: dict, mode: str, devices: Devices = None) -> dict:
  """Moves this process's slice of a global batch onto its devices."""
  if mode == 'pmap':
    local = [d for d in devices or jax.local_devices()
             if d.process_index == jax.process_index()]
    n = len(local)
    # An explicit, sharded `device_put` (rather than numpy into pmap): the
    # copy is the only host-to-device transfer a step makes, and the train
    # loop forbids implicit ones (`train.STEP_TRANSFER_GUARD`).
    stacked = NamedSharding(make_mesh(local), P(AXIS))
    def split(x):
      if x.shape[0] % n:
        raise ValueError(f'a batch of {x.shape[0]} rows per process does not '
                         f'split over {n} local devices; make config.'
                         'batch_size divisible by the device count.')
      return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]),
                            stacked)
    return jax.tree.map(split, batch)
  sharding = NamedSharding(make_mesh(devices), P(AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(x, mode: str) -> np.ndarray:
  """A sharded per-example output as one `[global_batch, ...]` numpy array."""
  x = gather_host(x)
  if mode == 'pmap':
    x = x.reshape((-1,) + x.shape[2:])
  return x


def gather_host(x: np.ndarray) -> np.ndarray:
  """Concatenates every process's host array along axis 0 (process order)."""
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def replicate(tree, devices: Devices = None):
  """Places a host pytree on every device (the layout steps return)."""
  sharding = NamedSharding(make_mesh(devices), P())
  return jax.device_put(tree, sharding)


def connect_processes(timeout_s: int = 600) -> None:
  """Opens the cross-process collectives while every process is present.

  XLA:CPU's gloo collectives connect the processes at the first collective
  a program runs, and give up after a fixed 30 s if a peer has not arrived
  (jaxlib 0.10; `--xla_cpu_collective_timeout_seconds` does not change it):
  the run then aborts. Processes that compile their first train step at
  different speeds, as on a loaded machine, arrive further apart than that.
  So every process first waits at a barrier of the coordination service
  (up to `timeout_s`), then all run one tiny psum over all devices; the
  connections it opens are reused, and later collectives wait for late
  peers. The psum also checks that every process sees every device. A no-op
  in a single process; harmless on GPU and TPU.
  """
  if jax.process_count() == 1:
    return
  # The coordination-service client, as Orbax's multi-host barriers use it;
  # `multihost_utils.sync_global_devices` is itself a collective.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  distributed.global_state.client.wait_at_barrier('jard_connect_processes',
                                                  timeout_s * 1000)
  ones = np.ones(jax.local_device_count(), np.int32)
  total = jax.pmap(lambda x: jax.lax.psum(x, AXIS), AXIS)(ones)
  seen = int(np.asarray(total.addressable_data(0)).item())
  if seen != jax.device_count():
    raise RuntimeError(f'a psum over all devices counted {seen} devices, '
                       f'expected {jax.device_count()}.')


# JAX records this duration event once for every program it lowers to MLIR,
# i.e. on every miss of a jitted function's in-memory cache, whether or not
# the persistent compilation cache then spares the XLA compile.
LOWERING_EVENT = '/jax/core/compile/jaxpr_to_mlir_module_duration'


class CompileCounter:
  """Counts the programs JAX lowers while a `with counter:` block runs.

      counter = CompileCounter()
      with counter:
        state, metrics = step(state, batch, key)
      assert counter.count == 0  # after warm-up: no recompilation

  Every `with` block adds to `count`; `close()` detaches the listener. It
  listens to `jax.monitoring`, so it sees every jit/pmap cache miss in this
  process while active, eager `jnp` operations included.
  """

  def __init__(self):
    self.count = 0
    self._active = False
    jax.monitoring.register_event_duration_secs_listener(self._listener)

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if self._active and event == LOWERING_EVENT:
      self.count += 1

  def __enter__(self):
    self._active = True
    return self

  def __exit__(self, *exc):
    self._active = False
    return False

  def close(self) -> None:
    with contextlib.suppress(AssertionError, ValueError):
      jax.monitoring.unregister_event_duration_listener(self._listener)
