"""The `Method` contract and the context a method's loss receives.

A method is data, not a training loop: its outer loss
`loss(params, batch, keys, ctx) -> (scalar, aux)` and, optionally, a method
state with its own init and update. The generic step in `jard.train` does the
gradient, the cross-device mean, the optimizer update, BatchNorm statistics
and metrics for every method.

`aux` is a dict with
  * `batch_stats`: the student's BatchNorm statistics after the method's
    train-mode forward passes (in the order the reference code runs them);
  * `metrics`: dict of scalar metrics (means over the local batch; the step
    averages them over devices);
  * optionally `method_state`: the new method state, computed in the loss
    and already identical on every device (CIARD's retrained teacher);
    `update_state`, if any, then runs on it.

`keys` are per-example PRNG keys `[B]`, derived from the step and the
example's position in the global batch, so an attack's random start is the
same on 1 or 8 devices.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jard import attacks
from jard import losses
from jard.models import Outputs

PyTree = Any


BUDGETS = ('absolute', 'pnr')
# `config.compute_dtype`: the dtype of the training forward passes.
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _cast_floats(tree, dtype):
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
      else a, tree)


def apply_in(model: nn.Module, variables, x, dtype: Optional[str], **kwargs):
  """`model.apply` computed in `dtype`, results in float32.

  With `dtype='bfloat16'` the parameters and the input are cast before the
  call, so every convolution and matmul runs in bfloat16 (BatchNorm keeps
  its statistics and reductions in float32), and floating outputs come back
  as float32 for the losses. The float32 parameters stay the optimizer's;
  gradients pass through the casts. `None` or `'float32'`: a plain apply.
  """
  if dtype in (None, 'float32'):
    return model.apply(variables, x, **kwargs)
  variables = dict(variables, params=_cast_floats(variables['params'], dtype))
  return _cast_floats(model.apply(variables, x.astype(dtype), **kwargs),
                      jnp.float32)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """A PGD-family attack configuration (primitives only).

  `budget='absolute'`: `attacks.pgd` with ε and the step in input units and
  the data range `bounds` (from the dataset; `None` for unbounded data).
  `budget='pnr'` (radio signals): `attacks.radio.pgd`, L2 with the budget
  `ε_i = ‖x_i‖·10^((pnr − SNR_i)/20)` and steps of `relative_step·ε_i`;
  `eps`, `step_size`, `norm` and `bounds` are then unused.
  """
  eps: float = 8 / 255
  step_size: float = 2 / 255
  steps: int = 10
  init: str = 'U'
  norm: str = 'linf'
  budget: str = 'absolute'
  pnr: float = 0.0
  relative_step: float = 0.25
  bounds: Optional[tuple[float, float]] = (0.0, 1.0)

  def _snr(self, batch):
    if batch is None or 'snr' not in batch:
      raise ValueError(
          'config.attack.train.budget="pnr" needs per-example SNR labels; '
          'use a radio source (amc_synthetic, radioml:<path>) or budget='
          '"absolute".')
    return batch['snr']

  def pgd(self, loss_fn, x, keys, batch=None):
    """Runs the attack; `batch['snr']` `[B]` is needed for a PNR budget."""
    if self.budget == 'pnr':
      return attacks.radio.pgd(loss_fn, x, keys, self._snr(batch),
                               pnr_db=self.pnr, steps=self.steps,
                               relative_step=self.relative_step,
                               init=self.init)
    return attacks.pgd(loss_fn, x, keys, eps=self.eps,
                       step_size=self.step_size, steps=self.steps,
                       norm=self.norm, init=self.init, bounds=self.bounds)

  def pgd_with_state(self, loss_fn, x, keys, state, batch=None):
    """`attacks.pgd_with_state`: the loss threads a state (train-mode BN).

    A PNR budget is the radio PGD of `pgd` (per-example L2 ε_i, steps of
    `relative_step·ε_i`, unbounded), with the state threaded through.
    """
    if self.budget == 'pnr':
      eps = attacks.radio.pnr_budget(x, self._snr(batch), self.pnr)
      return attacks.pgd_with_state(loss_fn, x, keys, state, eps=eps,
                                    step_size=self.relative_step * eps,
                                    steps=self.steps, norm='l2',
                                    init=self.init, bounds=None)
    return attacks.pgd_with_state(loss_fn, x, keys, state, eps=self.eps,
                                  step_size=self.step_size, steps=self.steps,
                                  norm=self.norm, init=self.init,
                                  bounds=self.bounds)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: model, variables (params and batch_stats), and the
  dtype its training-step forward passes compute in (`apply_in`)."""
  model: nn.Module
  variables: PyTree
  compute_dtype: Optional[str] = None

  def __call__(self, x: jax.Array) -> Outputs:
    """Eval-mode forward with gradients stopped at the parameters."""
    variables = jax.lax.stop_gradient(self.variables)
    return apply_in(self.model, variables, x, self.compute_dtype, train=False)


@dataclasses.dataclass(frozen=True)
class Context:
  """Everything a method's loss may read. Created inside the compiled step.

  Attributes:
    model: the student module (BatchNorm synchronised over `axis_name`).
    batch_stats: the student's BatchNorm statistics before this step.
    hp: the method's hyperparameters (`config.method` without `name`).
    attack: the training attack (`config.attack.train`).
    step: the global step (traced int).
    epoch: `step // steps_per_epoch` (traced int).
    steps_per_epoch: optimizer steps per epoch (a Python int).
    state: the method state (a pytree, `{}` when the method has none).
    teachers: name -> `Teacher`.
    num_classes: K.
    axis_name: the mapped device axis.
    compute_dtype: the dtype of the student's forward passes (`apply_in`),
      attacks inside the step included; evaluation is always float32.
  """
  model: nn.Module
  batch_stats: PyTree
  hp: Mapping[str, Any]
  attack: AttackSpec
  step: jax.Array
  epoch: jax.Array
  state: PyTree = dataclasses.field(default_factory=dict)
  steps_per_epoch: int = 1
  teachers: Mapping[str, Teacher] = dataclasses.field(default_factory=dict)
  num_classes: int = 10
  axis_name: Optional[str] = None
  compute_dtype: Optional[str] = None

  def apply(self, params, x, *, train: bool,
            batch_stats: Optional[PyTree] = None):
    """Runs the student; returns `(Outputs, batch_stats_after)`.

    In train mode BatchNorm uses (and updates) batch statistics starting from
    `batch_stats` (default: the step's initial statistics); in eval mode it
    uses the running averages and returns them unchanged.
    """
    batch_stats = self.batch_stats if batch_stats is None else batch_stats
    variables = {'params': params, 'batch_stats': batch_stats}
    if not train:
      return apply_in(self.model, variables, x, self.compute_dtype,
                      train=False), batch_stats
    outputs, updates = apply_in(self.model, variables, x, self.compute_dtype,
                                train=True, mutable=['batch_stats'])
    # Models without BatchNorm (the AMC transformers) return no collection.
    return outputs, updates.get('batch_stats', {})

  def logits_fn(self, params, *, train: bool = False):
    """`x -> logits` with stopped parameters, for attacks' inner loops."""
    params = jax.lax.stop_gradient(params)
    return lambda x: self.apply(params, x, train=train)[0].logits


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method.

  Attributes:
    name: registry name.
    loss: `(params, batch, keys, ctx) -> (loss, aux)`; `batch` has float
      `image [B, H, W, C]` in [0, 1] (augmented) and int `label [B]`.
    teachers: names of the teachers it needs (none for the AT baselines).
    init_state: `(hp, num_classes) -> pytree` initial method state, or
      `(hp, num_classes, teachers)` with `state_from_teachers` (a method
      that trains a copy of a teacher, CIARD).
    update_state: `(state, metrics, ctx) -> state`, run after the gradient
      step with metrics already averaged over devices.
    doc: one line for `--help`-style listings.
  """
  name: str
  loss: Callable[..., tuple[jax.Array, dict]]
  teachers: tuple[str, ...] = ()
  init_state: Optional[Callable[..., PyTree]] = None
  update_state: Optional[Callable[..., PyTree]] = None
  state_from_teachers: bool = False
  doc: str = ''


def split_keys(keys: jax.Array, num: int) -> tuple[jax.Array, ...]:
  """Splits `[B]` per-example keys into `num` independent `[B]` key arrays."""
  return tuple(jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
               for i in range(num))


def branch_ce(outputs: Outputs, labels: jax.Array, hp) -> jax.Array:
  """The attention branch's auxiliary CE, `aux_weight`·mean CE(aux, y) (ABN,
  ADER), for models built with `attention_stage`; 0 for models without."""
  if outputs.aux_logits is None:
    return jnp.float32(0.0)
  return hp.get('aux_weight', 1.0) * jnp.mean(
      losses.cross_entropy(outputs.aux_logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean top-1 accuracy over the batch."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)
