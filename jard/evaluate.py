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
| `apgd_ce`      | APGD-CE, 100 iterations, 1 run (AutoAttack's)   |
| `square<N>`    | Square, N queries (`square100`: CIARD protocol) |
| `transfer_<a>` | `<a>` crafted on a surrogate checkpoint         |

AutoAttack itself runs as its own stage (`jard.evaluate_autoattack`), and
`write_report` gathers everything in `report.md`.

`worst_case` is the accuracy under all attacks of the suite at once (an
example counts only if every attack failed on it).
"""

import functools
import re
import time
from typing import Callable, Optional
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jard import attacks
from jard import data as data_lib
from jard import evaluate_radio
from jard import losses
from jard import parallel
from jard import reports
from jard.attacks import apgd as apgd_lib
from jard.attacks import square as square_lib


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


def _apgd_ce(logits_fn, x, y, keys, eps):
  x_adv, _ = apgd_lib.apgd_attack(logits_fn, x, y, keys, eps=eps, loss='ce',
                                  n_iter=100)
  return x_adv


def _square(logits_fn, x, y, keys, eps, *, n_queries):
  x_adv, _ = square_lib.square(logits_fn, x, y, keys, eps=eps,
                               n_queries=n_queries)
  return x_adv


# name -> (logits_fn, x, y, keys, eps) -> x_adv. `square<N>` (Square with N
# queries, e.g. `square100` of the CIARD protocol) is parsed by `get_attack`,
# and `transfer_<name>` crafts `<name>` on a surrogate model
# (`config.eval.transfer`).
ATTACKS: dict[str, Callable] = {
    'clean': _clean,
    'fgsm': _fgsm,
    'pgd20_sat': functools.partial(_pgd, step_size=2 / 255, steps=20),
    'pgd20_trades': functools.partial(_pgd, step_size=0.003, steps=20),
    'cw_inf': _cw,
    'apgd_ce': _apgd_ce,
}
TRANSFER_PREFIX = 'transfer_'


def get_attack(name: str) -> Optional[Callable]:
  """The attack of a suite name, or None when the name is unknown."""
  name = name[len(TRANSFER_PREFIX):] if name.startswith(
      TRANSFER_PREFIX) else name
  match = re.fullmatch(r'square(\d+)', name)
  if match and int(match.group(1)) > 0:
    return functools.partial(_square, n_queries=int(match.group(1)))
  return ATTACKS.get(name)


def attack_id(name: str) -> int:
  """A stable id per attack name: its keys do not depend on the suite."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def check_suite(names, field: str = 'config.eval.attacks') -> tuple[str, ...]:
  """Parses a comma-separated (or tuple) suite and checks every name."""
  if isinstance(names, str):
    names = [n.strip() for n in names.split(',') if n.strip()]
  unknown = [n for n in names
             if get_attack(n) is None or n == TRANSFER_PREFIX + 'clean']
  if unknown or not names:
    raise ValueError(f'{field}={names!r}: unknown attack(s) {unknown}; choose '
                     f'from {sorted(ATTACKS)}, square<N> (N queries), or '
                     f'{TRANSFER_PREFIX}<attack> with config.eval.transfer.')
  return tuple(names)


def selection_suite(config) -> tuple[str, ...]:
  """The attacks run for checkpoint selection: clean plus the metric's."""
  names = ['clean']
  if config.select.metric not in names:
    names.append(config.select.metric)
  return check_suite(names, 'config.select.metric')


class Evaluator:
  """Compiled, sharded evaluation of one model under a suite of attacks.

  Each attack is its own compiled step with ε a traced argument, so the
  robustness curve (`curve`) reuses it at every ε, and `seconds` records
  the wall-clock time of each attack in the last `per_example` call.
  `transfer_<attack>` entries craft the attack on `surrogate` (a model whose
  variables `per_example` gets) and evaluate the crafted inputs on the
  model.
  """

  def __init__(self, model, suite, *, mode: str, batch_size: int,
               epsilon: float = 8 / 255, seed: int = 0, surrogate=None):
    self.suite = check_suite(suite)
    if surrogate is None and any(n.startswith(TRANSFER_PREFIX)
                                 for n in self.suite):
      raise ValueError(f'{self.suite}: transfer attacks need a surrogate '
                       'model (config.eval.transfer).')
    self.mode = mode
    self.batch_size = batch_size
    self.epsilon = epsilon
    self.key = jax.random.key(seed)
    self.seconds = {}

    def make_step(name):
      attack = get_attack(name)
      transfer = name.startswith(TRANSFER_PREFIX)

      def eval_fn(variables, surrogate_variables, batch, key, eps):
        x = data_lib.to_float(batch['image'])
        y = batch['label']
        # A transfer attack draws the white-box attack's keys: crafted on
        # the model itself, it is that attack exactly.
        base = name[len(TRANSFER_PREFIX):] if transfer else name
        keys = jax.vmap(lambda i: jax.random.fold_in(
            jax.random.fold_in(key, i), attack_id(base)))(batch['index'])
        logits_fn = lambda z: model.apply(variables, z, train=False).logits
        craft_fn = logits_fn
        if transfer:
          craft_fn = lambda z: surrogate.apply(surrogate_variables, z,
                                               train=False).logits
        x_adv = attack(craft_fn, x, y, keys, eps)
        return (jnp.argmax(logits_fn(x_adv), -1) == y).astype(jnp.float32)

      return parallel.compile_spmd(
          eval_fn, mode=mode, sharded_in=(False, False, True, False, False),
          sharded_out=True)

    self._steps = {name: make_step(name) for name in self.suite}

  def per_example(self, params, batch_stats, ds: data_lib.ImageDataset,
                  num_examples: int = -1, *, epsilon: Optional[float] = None,
                  names=None, surrogate_variables=None
                  ) -> dict[str, np.ndarray]:
    """Per-example correctness `{attack: [N] bool}` over the dataset."""
    variables = {'params': params, 'batch_stats': batch_stats}
    eps = jnp.float32(self.epsilon if epsilon is None else epsilon)
    batches = list(data_lib.eval_batches(
        ds, global_batch=self.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), num_examples=num_examples))
    masks = [parallel.gather_host(b.pop('mask')) > 0 for b in batches]
    sharded = [parallel.shard_batch(b, self.mode) for b in batches]
    results = {}
    for name in names or self.suite:
      start = time.perf_counter()
      outs = [parallel.to_host(self._steps[name](
          variables, surrogate_variables, batch, self.key, eps), self.mode)
              for batch in sharded]
      results[name] = np.concatenate(
          [out[mask] > 0.5 for out, mask in zip(outs, masks)])
      self.seconds[name] = time.perf_counter() - start
    return results

  def run(self, params, batch_stats, ds, num_examples: int = -1,
          surrogate_variables=None) -> dict:
    """Accuracies `{attack: fraction}` plus `worst_case` and `num_examples`."""
    correct = self.per_example(params, batch_stats, ds, num_examples,
                               surrogate_variables=surrogate_variables)
    summary = {name: float(np.mean(v)) for name, v in correct.items()}
    if len(self.suite) > 1:
      summary['worst_case'] = float(np.mean(np.all(
          np.stack(list(correct.values())), axis=0)))
    summary['num_examples'] = int(len(next(iter(correct.values()))))
    return summary

  def curve(self, params, batch_stats, ds, epsilons, num_examples: int = -1,
            names=None) -> dict[str, list[float]]:
    """Accuracy under each attack of `names` at every ε of `epsilons`."""
    names = [n for n in (names or self.suite) if n != 'clean']
    out = {name: [] for name in names}
    for eps in epsilons:
      correct = self.per_example(params, batch_stats, ds, num_examples,
                                 epsilon=eps, names=names)
      for name in names:
        out[name].append(float(np.mean(correct[name])))
    return out


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


def parse_epsilons(value: str, field: str = 'config.eval.curve_epsilons'
                   ) -> list[float]:
  """'2,4,8' (in 1/255) -> [2/255, 4/255, 8/255]."""
  try:
    out = [float(v) / 255 for v in value.split(',') if v.strip()]
  except ValueError:
    out = None
  if out is None or any(e < 0 for e in out):
    raise ValueError(f'{field}={value!r}: give comma-separated ε values in '
                     "units of 1/255, e.g. '2,4,8'.")
  return out


def image_protocol(config, model, evaluator: Evaluator, variables, test_ds,
                   surrogate=None, autoattack_progress=None) -> dict:
  """METHODS.md's protocol on one checkpoint: suite, curve, AutoAttack,
  transfer. Returns `{'accuracy', 'seconds'[, 'curve', 'autoattack']}`.

  `autoattack_progress`: AutoAttack's progress file, so that a killed eval
  stage resumes its AutoAttack after the last finished batch."""
  params, batch_stats = variables['params'], variables['batch_stats']
  num_examples = config.eval.num_examples
  accuracy = evaluator.run(params, batch_stats, test_ds, num_examples)
  seconds = dict(evaluator.seconds)
  out = {'accuracy': accuracy, 'seconds': seconds}
  if config.eval.curve_epsilons:
    epsilons = parse_epsilons(config.eval.curve_epsilons)
    curve_names = check_suite(config.eval.curve_attacks,
                              'config.eval.curve_attacks')
    curve_evaluator = evaluator
    if any(n not in evaluator.suite for n in curve_names):
      curve_evaluator = Evaluator(model, curve_names, mode=config.parallel,
                                  batch_size=config.eval.batch_size,
                                  seed=config.eval.seed)
    out['curve'] = {'epsilons': epsilons, **curve_evaluator.curve(
        params, batch_stats, test_ds, epsilons, num_examples, curve_names)}
  aa_cfg = config.eval.autoattack
  if aa_cfg.version:
    from jard import evaluate_autoattack  # pylint: disable=g-import-not-at-top
    runner = evaluate_autoattack.AutoAttack(
        model, version=aa_cfg.version, epsilon=config.eval.epsilon,
        batch_size=config.eval.batch_size, mode=config.parallel,
        seed=config.eval.seed, n_iter=aa_cfg.n_iter,
        n_queries=aa_cfg.n_queries)
    result = runner.run(variables, test_ds, aa_cfg.num_examples
                        if aa_cfg.num_examples != -1 else num_examples,
                        progress_path=autoattack_progress)
    out['autoattack'] = result.summary()
    accuracy['autoattack'] = out['autoattack']['robust_accuracy']
    seconds['autoattack'] = float(sum(result.seconds.values()))
  if surrogate is not None:
    surrogate_model, surrogate_variables = surrogate
    names = [TRANSFER_PREFIX + n for n in check_suite(
        config.eval.transfer.attacks, 'config.eval.transfer.attacks')]
    transfer = Evaluator(model, names, mode=config.parallel,
                         batch_size=config.eval.batch_size,
                         epsilon=config.eval.epsilon, seed=config.eval.seed,
                         surrogate=surrogate_model)
    summary = transfer.run(params, batch_stats, test_ds, num_examples,
                           surrogate_variables=surrogate_variables)
    for name in names:
      accuracy[name] = summary[name]
      seconds[name] = transfer.seconds[name]
  return out


def write_report(results: dict, directory: str, *, title: str,
                 figures=None) -> None:
  """Writes `results.json`, `report.md` and the PNG curve (`jard.reports`);
  `figures` (`{heading: PNG name}` in `directory`) are linked."""
  reports.write_report(results, directory, title=title, figures=figures)
