"""AutoAttack over a test set: sharded, compacted between attacks, checked.

The host loop follows the reference's `run_standard_evaluation`: a clean
pass, then each attack of the version on the points still robust, re-batched
so that the work shrinks with the robust accuracy (an attack on an
undefended model costs one batch of APGD-CE, not four attacks on every
point). Inside a batch the attack is the compiled, masked function of
`jard.attacks.autoattack`, run over all devices (`parallel.compile_spmd`)
with the padding masked. Example `i` (its row in the dataset) draws its
randomness from `fold_in(fold_in(key(seed), i), attack_id)`, so results do
not depend on the batch size, the compaction or the device count, and
`autoattack()` on one batch gives the same per-example answer.

The reference's sanity checks (`attacks_facts.md` §1.7) run on the first
batch and on the result; each failed check is a warning in the log and in
the report:

* `randomized`: 5 forward passes differ (in correct count, or by more than
  1e-4 in L2-normalised logits); use version 'rand'.
* `softmax`: the outputs look like probabilities; pass logits.
* `zero_gradient`: examples whose DLR loss has an all-zero input gradient.
* `n_classes`: too few classes for DLR / targeted DLR or for the targets.
* `square`: Square lowered the robust accuracy by more than 0.2 points after
  the white-box attacks (a sign of gradient masking).
* `final`: the perturbation exceeds ε, leaves [0, 1] or is NaN, or the robust
  accuracy recomputed from the returned points differs from the flags.

The reference's check for dynamic (test-time optimisation) defences traces
PyTorch calls; a JAX model is a pure function, so it does not apply.
"""

import dataclasses
import hashlib
import json
import os
import time
import zipfile
from typing import Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from jard import data as data_lib
from jard import parallel
from jard.attacks import apgd as apgd_lib
from jard.attacks import autoattack as aa

NUM_RANDOMIZED_PASSES = 5


@dataclasses.dataclass
class Result:
  """The outcome of `AutoAttack.run`, per example and per attack.

  Attributes:
    index: `[N]` dataset rows evaluated.
    clean: `[N]` bool, correct on the clean input.
    robust: `[N]` bool, survived every attack.
    broken_by: `{attack: [N] bool}`, the attack that first broke the point.
    x_adv: `[N, H, W, C]` float32 breaking points (clean input if robust).
    accuracy: `{'clean', attack...: robust accuracy after that attack}`, the
      reference's `robust_accuracy_dict`.
    seconds: `{'clean', attack...: wall-clock seconds}`.
    warnings: `{check: message}` of failed sanity checks.
    version: the AutoAttack version.
    epsilon: the L∞ radius.
  """
  index: np.ndarray
  clean: np.ndarray
  robust: np.ndarray
  broken_by: dict
  x_adv: np.ndarray
  accuracy: dict
  seconds: dict
  warnings: dict
  version: str = 'standard'
  epsilon: float = 8 / 255
  settings: dict = dataclasses.field(default_factory=dict)

  def summary(self) -> dict:
    """JSON-ready numbers: accuracies, seconds, images/s, warnings."""
    total = sum(self.seconds.values())
    return {'accuracy': dict(self.accuracy), 'seconds': dict(self.seconds),
            # The cascade's order (JSON files sort the dicts' keys).
            'order': list(self.accuracy),
            'robust_accuracy': float(np.mean(self.robust)),
            'num_examples': int(len(self.index)),
            'images_per_second': len(self.index) / max(total, 1e-9),
            'warnings': dict(self.warnings), 'version': self.version,
            'epsilon': self.epsilon, 'settings': dict(self.settings)}


class AutoAttack:
  """Compiled, sharded AutoAttack of one model.

  `model.apply(variables, x, train=False).logits` gives the logits; the
  model must be deterministic unless `version='rand'`, where
  `stochastic_apply(variables, x, keys) -> logits` must be given.
  """

  def __init__(self, model, *, version: str = 'standard',
               epsilon: float = 8 / 255, batch_size: int = 256,
               mode: str = 'pmap', seed: int = 0,
               attacks: Optional[tuple[str, ...]] = None,
               n_queries: int = 5000, n_iter: int = 100,
               stochastic_apply=None, devices=None):
    if devices is None and jax.process_count() > 1:
      devices = jax.local_devices()  # each process attacks its own rows
    self.version = version
    self.epsilon = float(epsilon)
    self.batch_size = batch_size
    self.mode = mode
    self.devices = devices
    self.key = jax.random.key(seed)
    self.settings = {'n_iter': n_iter, 'n_queries': n_queries, 'seed': seed,
                     'batch_size': batch_size}
    self.stochastic = version == 'rand'
    if self.stochastic and stochastic_apply is None:
      raise ValueError("AutoAttack version='rand' needs `stochastic_apply`: "
                       'a model without randomness needs no EoT; use '
                       "'standard'.")
    fns = aa.attack_fns(version, n_iter=n_iter, n_queries=n_queries)
    if attacks:
      unknown = [a for a in attacks if a not in fns]
      if unknown:
        raise ValueError(f'attacks {unknown} are not in AutoAttack '
                         f'{version!r}; choose from {list(fns)}.')
      fns = {name: fns[name] for name in attacks}
    self.attacks = fns
    n = len(devices) if devices else jax.device_count()
    self.num_devices = n
    if batch_size % n:
      raise ValueError(f'AutoAttack batch size {batch_size} must be divisible'
                       f' by the {n} devices.')

    def logits_fn_of(variables):
      if self.stochastic:
        return lambda z, keys: stochastic_apply(variables, z, keys)
      return lambda z: model.apply(variables, z, train=False).logits

    def keys_of(batch):
      return jax.vmap(jax.random.fold_in, (None, 0))(self.key,
                                                     batch['index'])

    def clean_fn(variables, batch):
      x = data_lib.to_float(batch['image'])
      pred = aa.predict(logits_fn_of(variables), x, keys_of(batch),
                        self.stochastic)
      return pred == batch['label']

    def make_attack(name, fn):
      def attack_fn(variables, batch):
        x = data_lib.to_float(batch['image'])
        x_adv, broken = aa.run_attack(
            fn, name, logits_fn_of(variables), x, batch['label'],
            keys_of(batch), eps=self.epsilon, active=batch['mask'] > 0,
            stochastic=self.stochastic)
        return x_adv, broken
      return parallel.compile_spmd(attack_fn, mode=mode,
                                   sharded_in=(False, True), sharded_out=True,
                                   devices=devices)

    self._clean = parallel.compile_spmd(clean_fn, mode=mode,
                                        sharded_in=(False, True),
                                        sharded_out=True, devices=devices)
    self._attacks = {name: make_attack(name, fn) for name, fn in fns.items()}
    self._logits = jax.jit(
        lambda v, x: model.apply(v, x, train=False).logits)
    self._dlr_grad = jax.jit(lambda v, x, y: jax.grad(
        lambda z: jnp.sum(apgd_lib.dlr_loss(logits_fn_of(v)(z), y)))(x))

  # -- batching ------------------------------------------------------------

  def _batches(self, images, labels, rows):
    """Padded, masked global batches of the given dataset rows.

    A last batch with few rows is padded only to the next size
    `devices × 2^k`, not to the full batch: inside a batch, masked points
    still cost compute, and the few points left for the last attacks would
    otherwise pay for a whole batch (at most log2(batch / devices) extra
    shapes are compiled per attack).
    """
    full = self.batch_size
    for start in range(0, len(rows), full):
      b = self._tail_size(min(full, len(rows) - start))
      pos = np.arange(start, start + b)
      take = rows[np.minimum(pos, len(rows) - 1)]
      yield pos < len(rows), {
          'image': images[take], 'label': labels[take],
          'index': take.astype(np.int32),
          'mask': (pos < len(rows)).astype(np.float32)}

  def _tail_size(self, n: int) -> int:
    size = self.num_devices
    while size < n:
      size *= 2
    return min(size, self.batch_size)

  def _shard(self, batch):
    return parallel.shard_batch(batch, self.mode, self.devices)

  def precompile(self, variables, image_shape, dtype=np.uint8) -> float:
    """Compiles every step for every batch size `run` may use; seconds.

    Runs each step once on an all-padding batch (no active point, so the
    attacks skip their work), which leaves only compilation to time: a
    benchmark then times the attacks alone.
    """
    start = time.perf_counter()
    sizes = sorted({self._tail_size(n) for n in range(1, self.batch_size + 1)})
    for size in sizes:
      batch = {'image': np.zeros((size,) + tuple(image_shape), dtype),
               'label': np.zeros((size,), np.int32),
               'index': np.arange(size, dtype=np.int32),
               'mask': np.zeros((size,), np.float32)}
      jax.block_until_ready(self._clean(variables, self._shard(batch)))
      for step in self._attacks.values():
        jax.block_until_ready(step(variables, self._shard(batch)))
    return time.perf_counter() - start

  # -- the evaluation ------------------------------------------------------

  def run(self, variables, ds: data_lib.ImageDataset,
          num_examples: int = -1, progress_path: Optional[str] = None,
          progress_every_seconds: float = 60.0) -> Result:
    """AutoAttack on the test set (or a fixed subset, `eval_indices`).

    Args:
      variables: the model's variables.
      ds: the test set.
      num_examples: evaluate `eval_indices(len(ds), num_examples)`.
      progress_path: an `.npz` file, replaced atomically after the clean
        pass, after each attack, and after a batch when the last save is
        `progress_every_seconds` old (it holds every adversarial image, so
        on a fast device saving after each batch would cost more than the
        batch). A run given an existing file resumes after its last saved
        batch; since each example's randomness depends only on its row, the
        per-example results equal those of a run never stopped. The file
        must come from the same variables, rows and settings (checked
        before anything runs).
      progress_every_seconds: the least time between two batch saves.

    In a multi-process run every process attacks `rows[p::count]` on its
    own devices, with its own progress file (`<stem>_process<p>.npz`), and
    all processes return the merged result of all rows.
    """
    if ds.is_signal:
      raise ValueError('AutoAttack is an image attack ([0, 1] inputs); the '
                       'radio protocol is `jard.evaluate_radio`.')
    rows = data_lib.eval_indices(len(ds), num_examples)
    count, index = jax.process_count(), jax.process_index()
    if count > 1 and progress_path:
      progress_path = f'{os.path.splitext(progress_path)[0]}_process{index}.npz'
    # Each process attacks every count-th row on its own devices: the
    # results of a row do not depend on which batch or device it ran in.
    state, warnings = self._run_rows(variables, ds, rows[index::count],
                                     progress_path, progress_every_seconds)
    if count > 1:
      state = _gather_processes(state, len(rows), count)
    images, labels, names = ds.images, ds.labels, list(self._attacks)
    clean, robust, x_adv = state['clean'], _robust(state), state['x_adv']
    seconds = {'clean': float(state['seconds'][0])}
    accuracy = {'clean': float(np.mean(clean))}
    broken_by = {}
    still = clean.copy()
    for a, name in enumerate(names):
      broken_by[name] = state['broken_by'][a].copy()
      still &= ~broken_by[name]
      seconds[name] = float(state['seconds'][a + 1])
      accuracy[name] = float(np.mean(still))
    warnings.update(self._checks_after(variables, images[rows], labels[rows],
                                       x_adv, robust, accuracy))
    for check, message in warnings.items():
      logging.warning('AutoAttack check %s: %s', check, message)
    return Result(index=rows, clean=clean, robust=robust,
                  broken_by=broken_by, x_adv=x_adv, accuracy=accuracy,
                  seconds=seconds, warnings=warnings, version=self.version,
                  epsilon=self.epsilon, settings=self.settings)

  def _run_rows(self, variables, ds, rows, progress_path,
                progress_every_seconds):
    """The cascade on dataset `rows` of this process: `(state, warnings)`."""
    images, labels = ds.images, ds.labels
    names = list(self._attacks)
    state, fingerprint = None, ''
    if progress_path:  # Hashing the variables costs a pass over them.
      fingerprint = self._fingerprint(variables, rows)
      state = _load_progress(progress_path, fingerprint, len(rows),
                             len(names), images.shape[1:])
    last_save = time.perf_counter()

    def save(force: bool) -> None:
      nonlocal last_save
      if progress_path and (
          force or time.perf_counter() - last_save >= progress_every_seconds):
        _save_progress(progress_path, state)
        last_save = time.perf_counter()
    warnings = self._checks_before(variables, images[rows[:self.batch_size]],
                                   labels[rows[:self.batch_size]],
                                   ds.num_classes)
    n = len(rows)
    position = np.full(len(ds), -1)
    position[rows] = np.arange(n)

    if state is None:
      start = time.perf_counter()
      clean = []
      for real, batch in self._batches(images, labels, rows):
        out = parallel.to_host(self._clean(variables, self._shard(batch)),
                               self.mode)
        clean.append(out[real])
      clean = np.concatenate(clean)
      state = {'fingerprint': np.array(fingerprint), 'clean': clean,
               'x_adv': np.array(data_lib.to_float(images[rows]), np.float32),
               'broken_by': np.zeros((len(names), n), bool),
               'seconds': np.zeros(len(names) + 1),
               'stage': np.array(0), 'todo': rows[clean], 'done': np.array(0)}
      state['seconds'][0] = time.perf_counter() - start
      save(force=True)
    else:
      logging.info('AutoAttack: resuming %s at attack %d of %d (%d of its %d '
                   'points done).', progress_path, int(state['stage']) + 1,
                   len(names), int(state['done']), len(state['todo']))
    logging.info('AutoAttack %s: clean accuracy %.2f%% on %d examples.',
                 self.version, 100 * state['clean'].mean(), n)

    for a in range(int(state['stage']), len(names)):
      step = self._attacks[names[a]]
      todo = state['todo']
      for real, batch in self._batches(images, labels,
                                       todo[int(state['done']):]):
        start = time.perf_counter()
        adv, broken = step(variables, self._shard(batch))
        adv = parallel.to_host(adv, self.mode)[real]
        broken = parallel.to_host(broken, self.mode)[real]
        where = position[batch['index'][real][broken]]
        state['x_adv'][where] = adv[broken]
        state['broken_by'][a, where] = True
        state['done'] = np.array(int(state['done']) + int(real.sum()))
        state['seconds'][a + 1] += time.perf_counter() - start
        save(force=False)
      robust = _robust(state)
      logging.info('robust accuracy after %s: %.2f%% (%.1f s, %d points '
                   'attacked)', names[a].upper(), 100 * robust.mean(),
                   state['seconds'][a + 1], len(todo))
      # The next attack's points are fixed when it starts, so a resumed
      # run re-batches exactly the same rows.
      state['stage'] = np.array(a + 1)
      state['todo'] = rows[robust]
      state['done'] = np.array(0)
      save(force=True)

    return state, warnings

  def _fingerprint(self, variables, rows) -> str:
    """What a progress file must match: variables, rows and settings.

    Not the batch size (nor the devices): a row's result does not depend on
    them, so a run may resume with smaller batches, which save more often.
    """
    digest = hashlib.sha256(np.asarray(rows, np.int64).tobytes())
    for leaf in jax.tree.leaves(variables):
      digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    settings = {k: v for k, v in self.settings.items() if k != 'batch_size'}
    return json.dumps({'version': self.version, 'epsilon': self.epsilon,
                       'settings': settings,
                       'attacks': list(self._attacks),
                       'sha256': digest.hexdigest()}, sort_keys=True)

  # -- the reference's sanity checks ---------------------------------------

  def _checks_before(self, variables, images, labels, num_classes) -> dict:
    warnings = {}
    x = jnp.asarray(data_lib.to_float(images))
    names = list(self.attacks)
    if any(n in names for n in ('apgd-dlr', 'apgd-t')) and num_classes <= 3:
      warnings['n_classes'] = (
          f'{num_classes} classes: DLR needs at least 3 and targeted DLR at '
          'least 4.')
    elif ('apgd-t' in names or 'fab-t' in names) and num_classes < 10:
      warnings['n_classes'] = (
          f'{num_classes} classes: 9 target classes are more than the '
          f'{num_classes - 1} possible; the targets are capped.')
    if self.stochastic:
      return warnings
    outputs = [np.asarray(self._logits(variables, x))
               for _ in range(NUM_RANDOMIZED_PASSES)]
    correct = [int(np.sum(o.argmax(-1) == labels)) for o in outputs]
    unit = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10)
            for o in outputs]
    max_diff = max(float(np.max(np.linalg.norm(unit[i] - unit[j], axis=-1)))
                   for i in range(len(unit)) for j in range(i + 1, len(unit)))
    if len(set(correct)) > 1 or max_diff > 1e-4:
      warnings['randomized'] = (
          f'{NUM_RANDOMIZED_PASSES} forward passes differ (max L2 distance '
          f'{max_diff:.2e}); the model looks randomized: use version "rand".')
    o = outputs[0]
    if (o.max() < 1 + 1e-5 and o.min() > -1e-5
        and np.all(np.abs(o.sum(-1) - 1) < 1e-5)):
      warnings['softmax'] = ('the outputs look like probabilities; attacks '
                             'need the logits.')
    if num_classes >= 3:
      grad = np.asarray(self._dlr_grad(variables, x, jnp.asarray(labels)))
      zero = int(np.sum(np.abs(grad.reshape(len(grad), -1)).sum(-1) == 0))
      if zero:
        warnings['zero_gradient'] = (
            f'{zero} of {len(grad)} points have a zero DLR gradient; '
            'gradient attacks are unreliable there (gradient masking?).')
    return warnings

  def _checks_after(self, variables, images, labels, x_adv, robust,
                    accuracy) -> dict:
    warnings = {}
    if 'square' in accuracy and len(accuracy) > 2:
      best = min(v for k, v in accuracy.items() if k != 'square')
      if accuracy['square'] < best - 0.002:
        warnings['square'] = (
            f'Square lowered the robust accuracy by '
            f'{100 * (best - accuracy["square"]):.2f} points below the white-'
            'box attacks: the evaluation may be unreliable (gradient '
            'masking); run Square longer or an adaptive attack.')
    x = np.asarray(data_lib.to_float(images))
    delta = np.abs(x_adv - x).reshape(len(x), -1).max(-1)
    problems = []
    if np.isnan(x_adv).any():
      problems.append(f'{int(np.isnan(x_adv).sum())} NaN values')
    if delta.max(initial=0) > self.epsilon + 1e-6:
      problems.append(f'max perturbation {delta.max():.6f} > ε')
    if x_adv.size and (x_adv.min() < 0 or x_adv.max() > 1):
      problems.append(f'values in [{x_adv.min():.4f}, {x_adv.max():.4f}]')
    if not self.stochastic:
      preds = []
      for s in range(0, len(x_adv), self.batch_size):
        preds.append(np.asarray(self._logits(
            variables, jnp.asarray(x_adv[s:s + self.batch_size]))).argmax(-1))
      recomputed = np.concatenate(preds) == labels if preds else robust
      if not np.array_equal(recomputed, robust):
        problems.append(
            f'robust accuracy recomputed from the returned points '
            f'{100 * recomputed.mean():.2f}% differs from the flags '
            f'{100 * robust.mean():.2f}%')
    if problems:
      warnings['final'] = '; '.join(problems)
    return warnings


# -- the progress file --------------------------------------------------------

_PROGRESS_KEYS = ('fingerprint', 'clean', 'x_adv', 'broken_by', 'seconds',
                  'stage', 'todo', 'done')


def _gather_processes(state: dict, n: int, count: int) -> dict:
  """Every process's rows (`rows[p::count]`) merged back into row order."""
  size = -(-n // count)  # rows of process 0, the most any process has
  stacked = multihost_utils.process_allgather(_padded_part(state, size))
  return _merge_parts(stacked, n, count)


def _padded_part(state: dict, size: int) -> dict:
  """One process's per-example fields, padded to `size` rows."""
  def pad(x, axis=0):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return np.pad(x, widths)
  return {'clean': pad(state['clean']), 'x_adv': pad(state['x_adv']),
          'broken_by': pad(state['broken_by'], axis=1),
          'seconds': state['seconds']}


def _merge_parts(stacked: dict, n: int, count: int) -> dict:
  """`_padded_part`s stacked over processes -> the fields `run` reads.

  `seconds` is the slowest process's: the wall-clock time of the run.
  """
  stacked = jax.tree.map(np.asarray, stacked)
  merged = {'clean': np.zeros(n, bool),
            'x_adv': np.zeros((n,) + stacked['x_adv'].shape[2:], np.float32),
            'broken_by': np.zeros((stacked['broken_by'].shape[1], n), bool),
            'seconds': np.max(stacked['seconds'], axis=0)}
  for p in range(count):
    mine = len(range(p, n, count))
    merged['clean'][p::count] = stacked['clean'][p, :mine]
    merged['x_adv'][p::count] = stacked['x_adv'][p, :mine]
    merged['broken_by'][:, p::count] = stacked['broken_by'][p, :, :mine]
  return merged


def _robust(state: dict) -> np.ndarray:
  """Correct on the clean input and broken by no attack so far."""
  return state['clean'] & ~state['broken_by'].any(axis=0)


def _save_progress(path: str, state: dict) -> None:
  """Writes the state next to `path`, then renames: never a partial file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **state)
  os.replace(tmp, path)


def _load_progress(path: str, fingerprint: str, n: int, num_attacks: int,
                   image_shape) -> Optional[dict]:
  """The saved state, None without a file; a clear error if it does not fit."""
  if not os.path.exists(path):
    return None
  fix = f'delete {path} to start over, or pass another progress_path.'
  try:
    with np.load(path, allow_pickle=False) as f:
      state = {key: f[key] for key in _PROGRESS_KEYS}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'AutoAttack progress file {path} is unreadable '
                     f'({e}); {fix}') from e
  if str(state['fingerprint']) != fingerprint:
    raise ValueError(f'AutoAttack progress file {path} was written for other '
                     f'variables, test rows or settings; {fix}')
  shapes = {'clean': (n,), 'x_adv': (n, *image_shape),
            'broken_by': (num_attacks, n), 'seconds': (num_attacks + 1,),
            'stage': (), 'done': ()}
  bad = [k for k, shape in shapes.items() if state[k].shape != shape]
  stage, done = int(state['stage']), int(state['done'])
  if bad or not 0 <= stage <= num_attacks or not (
      0 <= done <= len(state['todo'])):
    raise ValueError(f'AutoAttack progress file {path} is inconsistent '
                     f'(fields {bad or ["stage/done"]}); {fix}')
  state['x_adv'] = state['x_adv'].astype(np.float32)
  return state
