"""The training state, the one generic SPMD train step, and the loop.

Every method trains through `make_train_step`: it derives per-example keys,
augments on device, calls the method's loss under `value_and_grad`, averages
gradients, metrics and BatchNorm statistics over devices, applies the
optimizer and the method-state update, and refuses a non-finite update (the
state stays at the last finite step and the loop stops with a message).
"""

import contextlib
import time
from typing import Any, NamedTuple, Optional

from absl import logging
from clu import parameter_overview
import flax
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from jard import checkpoint
from jard import data as data_lib
from jard import evaluate
from jard import metric_writers
from jard import models
from jard import parallel
from jard import schedules
from jard.methods import AttackSpec
from jard.methods import Context
from jard.methods import Method
from jard.methods import Teacher

PyTree = Any


# Between log points the loop makes one explicit transfer, the batch's
# `device_put`. An implicit one (a stray `float()` or `np.asarray` of a device
# value, a numpy or Python value passed into the step) would make the host
# wait for the device, or copy, on every step, so it is an error. (On CPU the
# devices share host memory, so JAX only guards host-to-device copies there.)
STEP_TRANSFER_GUARD = 'disallow'


class NonFiniteLossError(FloatingPointError):
  """Raised when a training step produced a non-finite loss or gradient."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree


OPTIMIZERS = ('sgd', 'adamw')


def make_optimizer(config, *, steps_per_epoch: int, total_steps: int):
  """`config.optimizer.name`: `'sgd'` (default) or `'adamw'`.

  SGD has momentum and *coupled* weight decay, as PyTorch's `SGD`: PyTorch
  adds `wd · w` to the gradient before the momentum buffer, on every
  parameter (BatchNorm scales and biases included); `add_decayed_weights`
  before `sgd` is exactly that. AdamW (for the transformers) decays
  decoupled from the gradient, as PyTorch's `AdamW`, with β = (0.9, 0.999).

  Returns:
    `(tx, lr_fn)`.
  """
  opt = config.optimizer
  lr_fn = schedules.make_schedule(
      config.schedule.name, base_lr=opt.lr, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, cfg=config.schedule.to_dict())
  if opt.get('name', 'sgd') == 'adamw':
    return optax.adamw(lr_fn, weight_decay=opt.weight_decay), lr_fn
  tx = optax.chain(
      optax.add_decayed_weights(opt.weight_decay),
      optax.sgd(lr_fn, momentum=opt.momentum or None, nesterov=opt.nesterov))
  return tx, lr_fn


def create_train_state(model, tx, method: Method, key, image_shape, *,
                       hp=None, num_classes: int = 10,
                       teachers=None) -> TrainState:
  """Initial state: model variables, optimizer and method state."""
  variables = models.init_variables(model, key, image_shape)
  params = variables['params']
  method_state = {}
  if method.init_state is not None:
    extra = (teachers or {},) if method.state_from_teachers else ()
    method_state = method.init_state(dict(hp or {}), num_classes, *extra)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params), method_state=method_state)


def example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """Per-example keys from the example's position in the global batch.

  The device index fixes where this device's rows sit in the global batch,
  so keys are distinct per device and per example, and identical for a
  given example whether the batch runs on 1 device or on 8.
  """
  offset = lax.axis_index(parallel.AXIS) * batch_size
  return jax.vmap(jax.random.fold_in, (None, 0))(
      key, offset + jnp.arange(batch_size))


def make_train_step(*, model, method: Method, tx, hp, attack: AttackSpec,
                    steps_per_epoch: int, num_classes: int,
                    augment: bool = True, teachers=None,
                    compute_dtype: Optional[str] = None):
  """Builds the per-device step.

  `(state, batch, base_key[, teacher_variables]) -> (state, metrics)`, where
  `batch` holds this device's `image` (uint8 `[b, H, W, C]`, or float
  signals), `label` and any extras. `teachers` (name -> `Teacher`) give the
  teacher modules; their variables are an *argument* of the step
  (`teacher_variables`, name -> variables, replicated), not constants baked
  into the compiled program, so a 267M-parameter teacher costs no compile
  time and exists once in device memory. Without the argument the teachers'
  own variables are used. `compute_dtype` (`config.compute_dtype`) is the
  dtype of the student's and teachers' forward passes in the step
  (`methods.base.apply_in`). Run it through `parallel.compile_spmd`.
  """
  hp = flax.core.FrozenDict(hp)
  teachers = dict(teachers or {})

  def step_fn(state: TrainState, batch, base_key, teacher_variables=None):
    if teacher_variables is None:
      teacher_variables = {n: t.variables for n, t in teachers.items()}
    frozen = {n: Teacher(t.model, teacher_variables[n], compute_dtype)
              for n, t in teachers.items()}
    # The base key is constant; folding in the step makes every step's
    # randomness a function of the step alone, so resuming reproduces it.
    key = jax.random.fold_in(base_key, state.step)
    keys = example_keys(key, batch['label'].shape[0])
    aug_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    method_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    images = (data_lib.augment(batch['image'], aug_keys) if augment
              else data_lib.to_float(batch['image']))
    ctx = Context(model=model, batch_stats=state.batch_stats, hp=hp,
                  attack=attack, step=state.step,
                  epoch=state.step // steps_per_epoch,
                  state=state.method_state, teachers=frozen,
                  num_classes=num_classes, axis_name=parallel.AXIS,
                  steps_per_epoch=steps_per_epoch,
                  compute_dtype=compute_dtype)
    # Extras (radio: the per-example `snr`) pass through to the method.
    inputs = dict(batch, image=images)

    def loss_fn(params):
      return method.loss(params, inputs, method_keys, ctx)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    # Local means of equal-sized shards: their mean is the global mean.
    grads = lax.pmean(grads, parallel.AXIS)
    metrics = lax.pmean(dict(aux['metrics'], loss=loss), parallel.AXIS)
    batch_stats = lax.pmean(aux['batch_stats'], parallel.AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    method_state = aux.get('method_state', state.method_state)
    if method.update_state is not None:
      method_state = method.update_state(method_state, metrics, ctx)
    new_state = state.replace(step=state.step + 1, params=params,
                              batch_stats=batch_stats, opt_state=opt_state,
                              method_state=method_state)
    finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(
        optax.tree.norm(grads))
    # A non-finite step keeps the old state; the loop sees `nonfinite` and
    # stops, so no checkpoint ever holds NaN weights.
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                             new_state, state)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['nonfinite'] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return step_fn


class Run(NamedTuple):
  """What `build` returns: everything a loop needs to take steps."""
  state: TrainState  # on the host, unreplicated
  step: Any  # compiled `(state, batch, key, teacher_variables)`
  teacher_variables: PyTree  # replicated
  step_key: jax.Array
  lr_fn: Any


def build(config, *, model, method: Method, example_shape, num_classes: int,
          bounds, steps_per_epoch: int, total_steps: int,
          teachers=None) -> Run:
  """The optimizer, initial state and compiled SPMD step of a run.

  `train` runs it over the data; `benchmarks/throughput.py` times it on
  fixed batches. `example_shape` is one input's shape, `bounds` the data
  range the attacks clip to.
  """
  tx, lr_fn = make_optimizer(config, steps_per_epoch=steps_per_epoch,
                             total_steps=total_steps)
  hp = {k: v for k, v in config.method.to_dict().items() if k != 'name'}
  attack = AttackSpec(**config.attack.train.to_dict(), bounds=bounds)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(model, tx, method, init_key, example_shape,
                             hp=hp, num_classes=num_classes,
                             teachers=teachers)
  step_fn = make_train_step(
      model=model, method=method, tx=tx, hp=hp, attack=attack,
      steps_per_epoch=steps_per_epoch, num_classes=num_classes,
      augment=config.dataset.augment, teachers=teachers,
      compute_dtype=config.get('compute_dtype', 'float32'))
  # Donated: the loop never reuses the previous state.
  jit_step = parallel.compile_spmd(
      step_fn, mode=config.parallel, sharded_in=(False, True, False, False),
      sharded_out=False, donate_argnums=(0,))
  # Placed on every device once, so no step copies them again. (With several
  # processes the step still broadcasts the key, 8 bytes, each step: a
  # replicated global key is not what a multi-process pmap takes, so the
  # loop's transfer guard is single-process only.)
  teacher_variables = parallel.replicate(
      {name: t.variables for name, t in (teachers or {}).items()})
  if jax.process_count() == 1:
    step_key = parallel.replicate(step_key)
  return Run(state, jit_step, teacher_variables, step_key, lr_fn)


def _mean_metrics(history: list) -> dict:
  fetched = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train(config, workdir: str, *, model, method: Method, train_ds,
          select_ds=None, teachers=None, stop_at_step: Optional[int] = None):
  """Trains `model` with `method` and returns the final `TrainState`.

  Args:
    config: the resolved run config.
    workdir: this stage's directory (checkpoints, metrics).
    model: the student module, built with `bn_axis_name=parallel.AXIS`.
    method: the method.
    train_ds: training `ImageDataset`.
    select_ds: dataset for the per-epoch selection eval (None: no eval).
    teachers: name -> `Teacher`.
    stop_at_step: stop (as if killed) after this step's checkpoint; tests use
      it to check that resuming reproduces an uninterrupted run.

  Returns:
    `(state, stats)` with the final state and throughput statistics
    (`train_seconds`, `train_images`, `images_per_sec`; compile, evaluation
    and checkpoint time excluded) and `step_compiles_after_first`, the
    programs the step lowered after its first call (0 unless something
    made it recompile).
  """
  mode = config.parallel
  spe = data_lib.steps_per_epoch(len(train_ds), config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * spe)
  run = build(config, model=model, method=method,
              example_shape=train_ds.images.shape[1:],
              num_classes=train_ds.num_classes, bounds=train_ds.bounds,
              steps_per_epoch=spe, total_steps=total_steps, teachers=teachers)
  lr_fn, step_key = run.lr_fn, run.step_key
  ckpt = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints,
                                metric=config.select.metric or None)
  if jax.process_index() == 0:
    parameter_overview.log_parameter_overview(run.state.params)
  restored = ckpt.restore_latest(run.state)
  state = parallel.replicate(restored if restored is not None else run.state)
  start_step = int(state.step)
  if start_step:
    logging.info('Resuming at step %d (epoch %d).', start_step,
                 start_step // spe)
  jit_train_step, teacher_variables = run.step, run.teacher_variables
  selector = None
  if select_ds is not None and config.select.metric:
    selector = evaluate.make_evaluator(config, model, selection=True)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  batches = data_lib.train_batches(
      train_ds, global_batch=config.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count())
  bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                  disable=not config.progress_bar or jax.process_index() > 0)
  history, window_start, last_good = [], start_step, ckpt.latest_step()
  # Throughput counts only training steps: compile, evals and saves excluded.
  timed_steps, tic = 0, time.perf_counter()

  def check_and_log(step):
    nonlocal history, window_start, timed_steps
    if not history:
      return
    means = _mean_metrics(history)  # Waits for the device.
    if means.pop('nonfinite') > 0:
      raise NonFiniteLossError(
          f'Non-finite loss or gradient between steps {window_start} and '
          f'{step}; training stopped. The last good checkpoint (step '
          f'{last_good}) is kept in {workdir}. Lower config.optimizer.lr or '
          'check the inputs.')
    elapsed = time.perf_counter() - tic
    means['images_per_sec'] = timed_steps * config.batch_size / max(
        elapsed, 1e-9)
    stats['train_seconds'] += elapsed
    stats['train_images'] += timed_steps * config.batch_size
    means['learning_rate'] = float(lr_fn(step - 1))
    writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
    bar.set_postfix(loss=f'{means["loss"]:.3f}', img_s=f'{means["images_per_sec"]:.0f}',
                    **{k[:3]: f'{v:.3f}' for k, v in means.items()
                       if k.endswith('accuracy')})
    history, window_start, timed_steps = [], step, 0

  stats = {'train_seconds': 0.0, 'train_images': 0}
  recompiles = parallel.CompileCounter()
  logging.info('Initial compilation, this might take some minutes...')
  # Whatever stops the loop (a non-finite loss, Ctrl-C), pending async saves
  # are completed, so the last good checkpoint is on disk.
  try:
    for step in range(start_step, total_steps):
      # Only the first step of a (resumed) run may compile the step or make
      # an implicit transfer (metrics are fetched at log points only).
      first = step == start_step
      guarded = not first and jax.process_count() == 1  # see `build`
      with (contextlib.nullcontext() if first else recompiles), (
          jax.transfer_guard(STEP_TRANSFER_GUARD) if guarded
          else contextlib.nullcontext()):
        batch = parallel.shard_batch(next(batches), mode)
        state, metrics = jit_train_step(state, batch, step_key,
                                        teacher_variables)
      history.append(metrics)
      timed_steps += 1
      if step == start_step:
        jax.block_until_ready(metrics)
        logging.info('Initial compilation completed.')
        timed_steps, tic = 0, time.perf_counter()
      done = step + 1
      bar.update(1)
      epoch_end = done % spe == 0 or done == total_steps
      save_now = epoch_end or done % config.checkpoint_every_steps == 0
      if done % config.log_every_steps == 0 or save_now:
        check_and_log(done)
      if save_now:
        eval_metrics = None
        epoch = (done - 1) // spe + 1
        if selector is not None and epoch_end and (
            epoch % config.select.every_epochs == 0 or done == total_steps):
          eval_metrics = selector.run(state.params, state.batch_stats,
                                      select_ds, config.select.num_examples)
          writer.write_scalars(done, {f'select/{k}': v
                                      for k, v in eval_metrics.items()})
        ckpt.save(done, state, eval_metrics)
        last_good = done
        if stop_at_step is not None and done >= stop_at_step:
          break
      if done % config.log_every_steps == 0 or save_now:
        tic = time.perf_counter()
  finally:
    recompiles.close()
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.flush()
  stats['images_per_sec'] = stats['train_images'] / max(
      stats['train_seconds'], 1e-9)
  # A step that compiled again (a changed shape, dtype or weak type in the
  # state or batch) costs a full compile each time; the tests require 0.
  stats['step_compiles_after_first'] = recompiles.count
  if recompiles.count:
    logging.warning('The train step compiled %d more times after its first '
                    'step.', recompiles.count)
  logging.info('Training throughput: %.1f images/s over %d images.',
               stats['images_per_sec'], stats['train_images'])
  return state, stats
