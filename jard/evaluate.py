"""The robustness suite: clean, FGSM, PGD-20 (two step sizes) and CW∞.

All attacks run in eval mode (BatchNorm running statistics) on every test
example: the last batch is padded and the padding masked, never dropped.
Each example's random start comes from a key folded from its index in the
dataset, so results do not depend on the batch size or the device count.

Suite entries (METHODS.md, "Evaluation protocol"), at ε = `config.eval.epsilon`:

| name           | attack                                          |
|----------------|-------------------------------------------------|
| `clean`        | no attack                                       |
| `fgsm`         | one step of ε, no random start                  |
| `pgd20_sat`    | PGD-20, step 2/255, init U ("PGD_SAT")          |
| `pgd20_trades` | PGD-20, step 0.003, init U ("PGD_TRADES")       |
| `cw_inf`       | PGD-30, step 2/255, init U, κ = 50 margin loss  |

`worst_case` is the accuracy under all attacks of the suite at once (an
example counts only if every attack failed on it).
"""

import functools
import json
import os
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jard import attacks
from jard import data as data_lib
from jard import evaluate_radio
from jard import losses
from jard import parallel


def _clean(logits_fn, x, y, keys, eps):
  del logits_fn, y, keys, eps
  return x


def _fgsm(logits_fn, x, y, keys, eps):
  del keys
  return attacks.fgsm(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                      eps=eps)


def _pgd(logits_fn, x, y, keys, eps, *, step_size, steps):
  return attacks.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                     keys, eps=eps, step_size=step_size, steps=steps,
                     init='U')


def _cw(logits_fn, x, y, keys, eps):
  return attacks.cw_inf(logits_fn, x, y, keys, eps=eps, step_size=2 / 255,
                        steps=30, kappa=50.0)


# name -> (logits_fn, x, y, keys, eps) -> x_adv
ATTACKS: dict[str, Callable] = {
    'clean': _clean,
    'fgsm': _fgsm,
    'pgd20_sat': functools.partial(_pgd, step_size=2 / 255, steps=20),
    'pgd20_trades': functools.partial(_pgd, step_size=0.003, steps=20),
    'cw_inf': _cw,
}


def check_suite(names, field: str = 'config.eval.attacks') -> tuple[str, ...]:
  """Parses a comma-separated (or tuple) suite and checks every name."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  unknown = [n for n in names if n not in ATTACKS]
  if unknown or not names:
    raise ValueError(f'{field}={names!r}: unknown attack(s) {unknown}; choose '
                     f'from {sorted(ATTACKS)}.')
  return tuple(names)


def selection_suite(config) -> tuple[str, ...]:
  """The attacks run for checkpoint selection: clean plus the metric's."""
  names = ['clean']
  if config.select.metric not in names:
    names.append(config.select.metric)
  return check_suite(names, 'config.select.metric')


class Evaluator:
  """Compiled, sharded evaluation of one model under a suite of attacks."""

  def __init__(self, model, suite, *, mode: str, batch_size: int,
               epsilon: float = 8 / 255, seed: int = 0):
    self.suite = check_suite(suite)
    self.mode = mode
    self.batch_size = batch_size
    self.key = jax.random.key(seed)

    def eval_fn(variables, batch, key):
      x = data_lib.to_float(batch['image'])
      y = batch['label']
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch['index'])
      logits_fn = lambda z: model.apply(variables, z, train=False).logits
      out = {}
      for i, name in enumerate(self.suite):
        attack_keys = jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(keys)
        x_adv = ATTACKS[name](logits_fn, x, y, attack_keys, epsilon)
        out[name] = (jnp.argmax(logits_fn(x_adv), -1) == y).astype(
            jnp.float32)
      return out

    self._step = parallel.compile_spmd(
        eval_fn, mode=mode, sharded_in=(False, True, False), sharded_out=True)

  def per_example(self, params, batch_stats, ds: data_lib.ImageDataset,
                  num_examples: int = -1) -> dict[str, np.ndarray]:
    """Per-example correctness `{attack: [N] bool}` over the dataset."""
    variables = {'params': params, 'batch_stats': batch_stats}
    results = {name: [] for name in self.suite}
    for batch in data_lib.eval_batches(
        ds, global_batch=self.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), num_examples=num_examples):
      mask = parallel.gather_host(batch.pop('mask')) > 0
      out = self._step(variables, parallel.shard_batch(batch, self.mode),
                       self.key)
      for name in self.suite:
        results[name].append(parallel.to_host(out[name], self.mode)[mask]
                             > 0.5)
    return {name: np.concatenate(v) for name, v in results.items()}

  def run(self, params, batch_stats, ds, num_examples: int = -1) -> dict:
    """Accuracies `{attack: fraction}` plus `worst_case` and `num_examples`."""
    correct = self.per_example(params, batch_stats, ds, num_examples)
    summary = {name: float(np.mean(v)) for name, v in correct.items()}
    if len(self.suite) > 1:
      summary['worst_case'] = float(np.mean(np.all(
          np.stack(list(correct.values())), axis=0)))
    summary['num_examples'] = int(len(next(iter(correct.values()))))
    return summary


def make_evaluator(config, model, *, selection: bool = False):
  """The image suite's `Evaluator`, or the radio protocol's.

  `selection=True` builds the per-epoch checkpoint-selection evaluator
  (images: clean + `config.select.metric` only).
  """
  if data_lib.is_radio_config(config.dataset):
    radio = config.eval.radio
    return evaluate_radio.RadioEvaluator(
        model, mode=config.parallel, batch_size=config.eval.batch_size,
        pnr=radio.pnr, steps=radio.steps, relative_step=radio.relative_step,
        seed=config.eval.seed)
  suite = (selection_suite(config) if selection
           else config.eval.attacks)
  return Evaluator(
      model, suite, mode=config.parallel, batch_size=config.eval.batch_size,
      epsilon=config.eval.epsilon, seed=config.eval.seed)


def write_report(results: dict, directory: str, *, title: str) -> None:
  """Writes `results.json` and `results.md` (a markdown table)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True)
  lines = [f'# {title}', '']
  for checkpoint_name, summary in results.items():
    if not isinstance(summary, dict) or 'accuracy' not in summary:
      continue
    accs = summary['accuracy']
    lines.append(f'## {checkpoint_name} checkpoint (step {summary["step"]}, '
                 f'{accs["num_examples"]} test examples)')
    lines.append('')
    lines.append('| attack | accuracy (%) |')
    lines.append('|---|---|')
    for name, value in accs.items():
      if name != 'num_examples':
        lines.append(f'| {name} | {100 * value:.2f} |')
    lines.append('')
  with open(os.path.join(directory, 'results.md'), 'w') as f:
    f.write('\n'.join(lines))
  logging.info('Wrote %s/results.{json,md}.', directory)
