"""The generic train step: device-count and mapping invariance, NaN guard."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jard import methods
from jard import parallel
from jard import schedules
from jard import train as train_lib
from jard.models import resnet

BATCH = 16


def _tiny_model():
  return resnet.ResNet(stage_sizes=(1, 1), widths=(8, 16), num_classes=10,
                       bn_axis_name=parallel.AXIS)


def _batches(num_steps):
  rng = np.random.default_rng(0)
  return [{'image': rng.integers(0, 256, (BATCH, 16, 16, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, (BATCH,)).astype(np.int32)}
          for _ in range(num_steps)]


def _stepper(method_name, mode, num_devices, compute_dtype=None,
             norm='linf'):
  """The initial host state and a host `state, batch -> state, loss` step of
  `method_name` on the first `num_devices` devices."""
  devices = jax.devices()[:num_devices]
  model = _tiny_model()
  method = methods.get_method(method_name)
  tx = optax.chain(optax.add_decayed_weights(5e-4),
                   optax.sgd(0.1, momentum=0.9))
  if norm == 'linf':
    attack = methods.AttackSpec(eps=8 / 255, step_size=2 / 255, steps=2,
                                init='U')
  else:
    attack = methods.AttackSpec(eps=0.5, step_size=0.125, steps=2, init='U',
                                norm='l2')
  state = train_lib.create_train_state(model, tx, method, jax.random.key(0),
                                       (16, 16, 3))
  step_fn = train_lib.make_train_step(
      model=model, method=method, tx=tx, hp={'beta': 6.0}, attack=attack,
      steps_per_epoch=10, num_classes=10, compute_dtype=compute_dtype)
  compiled = parallel.compile_spmd(step_fn, mode=mode,
                                   sharded_in=(False, True, False),
                                   sharded_out=False, devices=devices)

  def step(state, batch):
    state, metrics = compiled(parallel.replicate(state, devices),
                              parallel.shard_batch(batch, mode, devices),
                              jax.random.key(1))
    return jax.device_get(state), float(metrics['loss'])

  return jax.device_get(state), step


def _run(method_name, mode, num_devices, num_steps=3, compute_dtype=None,
         norm='linf'):
  """`num_steps` steps: their losses and the states before and after each."""
  state, step = _stepper(method_name, mode, num_devices, compute_dtype, norm)
  states, losses = [state], []
  for batch in _batches(num_steps):
    state, loss = step(state, batch)
    states.append(state)
    losses.append(loss)
  return np.array(losses), states


# TRADES runs with an L2 inner attack here. Its L∞ attack steps by the sign
# of the gradient of a KL that is ~0 at the clean input, so components at
# rounding level flip with the kernels' summation order, which depends on the
# per-device batch: from the same weights, 16 examples on 1 device and 2 on
# each of 8 give adversarial images that differ in 4 of 12288 pixels by
# 4/255, so the new weights differ by 6e-6 (and by 3e-8 with no attack
# steps). That is the attack's discontinuity, not the mapping's; the L2 step
# (gradient / its norm) is continuous, so the mapping is tested at 1e-5.
@pytest.mark.parametrize('method_name,norm', [('pgd_at', 'linf'),
                                              ('trades', 'l2')])
def test_one_and_eight_devices_pmap_and_shard_map_agree(method_name, norm):
  """Every step of the 1-device pmap run, taken again from the same state on
  8 devices and with shard_map, gives the same loss and the same new state.

  Steps are compared from the same state rather than as whole trajectories,
  so a failure names the step, and float reassociation (the gradient mean
  over 8 devices sums in another order, ~1e-7) does not compound.
  """
  assert jax.device_count() == 8
  ref_losses, ref_states = _run(method_name, 'pmap', 1, norm=norm)
  batches = _batches(3)
  for mode, n in [('pmap', 8), ('shard_map', 1), ('shard_map', 8)]:
    _, step = _stepper(method_name, mode, n, norm=norm)
    for i, batch in enumerate(batches):
      state, loss = step(ref_states[i], batch)
      where = f'{mode} on {n} devices, step {i + 1}'
      np.testing.assert_allclose(loss, ref_losses[i], rtol=1e-5,
                                 err_msg=where)
      for name in ('params', 'batch_stats', 'opt_state'):
        jax.tree.map(
            functools.partial(np.testing.assert_allclose, rtol=1e-5,
                              atol=1e-6, err_msg=f'{name}, {where}'),
            getattr(state, name), getattr(ref_states[i + 1], name))
      assert int(state.step) == i + 1
  # The three steps really trained: parameters moved.
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: np.max(np.abs(a - b)), ref_states[-1].params,
      ref_states[0].params))
  assert max(moved) > 1e-3


def test_bfloat16_compute_keeps_float32_state_and_close_losses():
  """Mixed precision: bf16 convolutions in the step (the attack's too),
  float32 parameters, optimizer and BatchNorm statistics, and losses near
  the float32 run's."""
  ref_losses, ref_states = _run('pgd_at', 'pmap', 1)
  losses, states = _run('pgd_at', 'pmap', 1, compute_dtype='bfloat16')
  ref_state, state = ref_states[-1], states[-1]
  for leaf in jax.tree.leaves((state.params, state.batch_stats,
                               state.opt_state)):
    assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  np.testing.assert_allclose(losses, ref_losses, rtol=0.02)
  assert not np.array_equal(losses, ref_losses)  # it did compute in bf16
  # Every convolution of the step runs in bf16.
  model, method = _tiny_model(), methods.get_method('pgd_at')
  tx = optax.sgd(0.1)
  step_fn = train_lib.make_train_step(
      model=model, method=method, tx=tx, hp={}, steps_per_epoch=10,
      num_classes=10, attack=methods.AttackSpec(steps=2),
      compute_dtype='bfloat16')
  mapped = jax.pmap(step_fn, axis_name=parallel.AXIS,
                    in_axes=(None, 0, None), devices=jax.devices()[:1])
  batch = parallel.shard_batch(_batches(1)[0], 'pmap', jax.devices()[:1])
  hlo = mapped.lower(jax.device_get(ref_state), batch,
                     jax.random.key(1)).as_text()
  convs = [line for line in hlo.splitlines() if 'convolution' in line]
  assert convs and all('bf16' in line for line in convs)


def test_piecewise_schedule_is_epoch_wise_multistep():
  fn = schedules.make_schedule(
      'piecewise', base_lr=0.1, steps_per_epoch=10, total_steps=1000,
      cfg={'boundaries': (2, 4), 'factor': 0.1})
  lrs = [float(fn(s)) for s in (0, 19, 20, 39, 40, 999)]
  np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                             rtol=1e-6)


def test_cosine_and_custom_schedules():
  fn = schedules.make_schedule('cosine', base_lr=0.2, steps_per_epoch=10,
                               total_steps=100)
  np.testing.assert_allclose([float(fn(0)), float(fn(50)), float(fn(100))],
                             [0.2, 0.1, 0.0], atol=1e-7)
  custom = lambda epoch, *, base_lr, cfg: base_lr / (1.0 + epoch)
  fn = schedules.make_schedule(custom, base_lr=1.0, steps_per_epoch=5,
                               total_steps=50)
  np.testing.assert_allclose([float(fn(4)), float(fn(5)), float(fn(12))],
                             [1.0, 0.5, 1 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match='config.schedule.name'):
    schedules.make_schedule('nope', base_lr=1.0, steps_per_epoch=1,
                            total_steps=1)


def test_optimizer_matches_pytorch_sgd_with_coupled_weight_decay():
  """Two steps of optax chain == PyTorch SGD(momentum, weight_decay) maths."""
  config = ml_collections.ConfigDict({
      'optimizer': {'lr': 0.1, 'momentum': 0.9, 'nesterov': False,
                    'weight_decay': 5e-4},
      'schedule': {'name': 'constant'}})
  tx, _ = train_lib.make_optimizer(config, steps_per_epoch=1, total_steps=10)
  w = jnp.array([1.0, -2.0])
  grads = [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0])]
  opt_state = tx.init(w)
  w_ref, buf = np.array([1.0, -2.0]), None
  for g in grads:
    updates, opt_state = tx.update(g, opt_state, w)
    w = optax.apply_updates(w, updates)
    d = np.asarray(g) + 5e-4 * w_ref            # grad + wd * w
    buf = d if buf is None else 0.9 * buf + d   # dampening 0
    w_ref = w_ref - 0.1 * buf
  np.testing.assert_allclose(np.asarray(w), w_ref, rtol=1e-6)
