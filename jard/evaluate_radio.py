"""The radio-signal evaluation protocol (ATARD) and its report.

Attacks follow the PNR threat model of `attacks.radio`: example `i` at SNR
`SNR_i` gets the L2 budget `ε_i = ‖x_i‖·10^((PNR − SNR_i)/20)`.

For one model the protocol measures, per test example:
  * `clean` correctness, and the input-gradient norm `‖∇ₓ CE(f(x), y)‖₂`;
  * `fgm` and `pgd` (L2 PGD, `steps` × `relative_step`·ε_i, random start)
    correctness at the reference PNR, on every SNR (accuracy vs SNR);
  * `fgm` and `pgd` at every PNR of a sweep, on the examples of a few SNRs
    (accuracy vs PNR at those SNRs).

The PNR is a traced argument of the compiled attack function, so a sweep
compiles once, and clean accuracy and the gradient norm (which do not depend
on the PNR) are computed once per example. Every example's random start is folded from its row index, so results
do not depend on the batch size or the device count.
"""

import json
import os
from typing import Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jard import attacks
from jard import data as data_lib
from jard import losses
from jard import parallel
from jard import reports

SUITE = ('clean', 'fgm', 'pgd')


def parse_numbers(text, field: str) -> tuple[float, ...]:
  """`'-20,-10,0'` (or a tuple) -> (-20.0, -10.0, 0.0); ValueError names field."""
  if isinstance(text, (int, float)):
    return (float(text),)
  parts = text.split(',') if isinstance(text, str) else list(text)
  try:
    values = tuple(float(p) for p in parts if str(p).strip())
  except ValueError:
    values = ()
  if not values:
    raise ValueError(f'{field}={text!r} must be a comma-separated list of '
                     'numbers (dB), e.g. "-20,-10,0".')
  return values


class RadioEvaluator:
  """Compiled, sharded PNR-budget evaluation of one radio classifier."""

  def __init__(self, model, *, mode: str, batch_size: int, pnr: float = -10,
               steps: int = 10, relative_step: float = 0.25, seed: int = 0):
    self.mode = mode
    self.batch_size = batch_size
    self.pnr = pnr
    self.key = jax.random.key(seed)
    self.suite = SUITE

    def logits_and_ce(variables, batch):
      y = batch['label']
      logits_fn = lambda z: model.apply(variables, z, train=False).logits
      return logits_fn, lambda z: losses.cross_entropy(logits_fn(z), y)

    def correct(logits_fn, z, y):
      return (jnp.argmax(logits_fn(z), -1) == y).astype(jnp.float32)

    # Clean accuracy and the gradient norm do not depend on the PNR, so a
    # sweep runs only the attacks.
    def clean_fn(variables, batch):
      logits_fn, ce = logits_and_ce(variables, batch)
      x = batch['image']
      grad = jax.grad(lambda z: jnp.sum(ce(z)))(x)
      return {'clean': correct(logits_fn, x, batch['label']),
              'grad_norm': jnp.sqrt(jnp.sum(jnp.square(
                  grad.reshape(grad.shape[0], -1)), axis=-1))}

    def attack_fn(variables, batch, key, pnr_db):
      logits_fn, ce = logits_and_ce(variables, batch)
      x, y, snr = batch['image'], batch['label'], batch['snr']
      keys = jax.vmap(jax.random.fold_in, (None, 0))(key, batch['index'])
      x_fgm = attacks.radio.fgm(ce, x, snr, pnr_db=pnr_db)
      x_pgd = attacks.radio.pgd(ce, x, keys, snr, pnr_db=pnr_db, steps=steps,
                                relative_step=relative_step)
      return {'fgm': correct(logits_fn, x_fgm, y),
              'pgd': correct(logits_fn, x_pgd, y)}

    self._clean = parallel.compile_spmd(
        clean_fn, mode=mode, sharded_in=(False, True), sharded_out=True)
    self._attack = parallel.compile_spmd(
        attack_fn, mode=mode, sharded_in=(False, True, False, False),
        sharded_out=True)

  def per_example(self, params, batch_stats, ds: data_lib.ImageDataset, *,
                  pnr: Optional[float] = None,
                  clean: bool = True) -> dict[str, np.ndarray]:
    """Per-example results over `ds` at `pnr` (default: the reference).

    Returns:
      `{fgm, pgd: [N] bool, snr: [N]}`, plus `clean` `[N]` bool and
      `grad_norm` `[N]` when `clean`.
    """
    if 'snr' not in ds.extras:
      raise ValueError(f'{ds.name} has no SNR labels; the radio protocol '
                       'needs a radio source (amc_synthetic, radioml:).')
    variables = {'params': params, 'batch_stats': batch_stats}
    pnr = jnp.asarray(self.pnr if pnr is None else pnr, jnp.float32)
    out = {}
    for batch in data_lib.eval_batches(
        ds, global_batch=self.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count()):
      mask = parallel.gather_host(batch.pop('mask')) > 0
      out.setdefault('snr', []).append(parallel.gather_host(batch['snr'])[mask])
      batch = parallel.shard_batch(batch, self.mode)
      result = self._attack(variables, batch, self.key, pnr)
      if clean:
        result.update(self._clean(variables, batch))
      for name, value in result.items():
        value = parallel.to_host(value, self.mode)[mask]
        out.setdefault(name, []).append(value if name == 'grad_norm'
                                        else value > 0.5)
    return {k: np.concatenate(v) for k, v in out.items()}

  def run(self, params, batch_stats, ds, num_examples: int = -1) -> dict:
    """Accuracies `{clean, fgm, pgd}` at the reference PNR (selection)."""
    rows = data_lib.eval_indices(len(ds), num_examples)
    correct = self.per_example(params, batch_stats, ds.subset(rows, ''))
    summary = {name: float(np.mean(correct[name])) for name in self.suite}
    summary['num_examples'] = int(len(rows))
    return summary

  def protocol(self, params, batch_stats, ds, *, pnrs: Sequence[float],
               snrs: Sequence[float], num_examples: int = -1) -> dict:
    """The full protocol (module docstring) as a JSON-ready dict."""
    rows = data_lib.eval_indices(len(ds), num_examples)
    base = ds.subset(rows, '[eval]')
    full = self.per_example(params, batch_stats, base)
    levels = np.unique(full['snr'])
    by_snr = lambda c, key: [float(np.mean(c[key][c['snr'] == s]))
                             for s in levels]
    results = {
        'pnr_db': float(self.pnr),
        'num_examples': int(len(rows)),
        'accuracy': {name: float(np.mean(full[name])) for name in self.suite},
        'grad_norm': float(np.mean(full['grad_norm'])),
        'vs_snr': {'snr': levels.tolist(),
                   **{name: by_snr(full, name) for name in self.suite},
                   'grad_norm': by_snr(full, 'grad_norm')},
        'vs_pnr': {},
    }
    sweep_rows = np.flatnonzero(np.isin(base.extras['snr'], snrs))
    if len(sweep_rows):
      sweep_ds = base.subset(sweep_rows, '[sweep]')
      sweep_snr = sweep_ds.extras['snr']
      curves = {float(s): {'pnr': list(map(float, pnrs)), 'fgm': [], 'pgd': [],
                           'clean': float(np.mean(
                               full['clean'][sweep_rows][sweep_snr == s])),
                           'num_examples': int(np.sum(sweep_snr == s))}
                for s in snrs if np.any(sweep_snr == s)}
      for pnr in pnrs:
        correct = self.per_example(params, batch_stats, sweep_ds, pnr=pnr,
                                   clean=False)
        for s, curve in curves.items():
          sel = correct['snr'] == s
          for name in ('fgm', 'pgd'):
            curve[name].append(float(np.mean(correct[name][sel])))
      results['vs_pnr'] = {f'{s:g}': c for s, c in curves.items()}
    return results


def _plot(results_by_model: dict, directory: str) -> list[str]:
  """Accuracy-vs-PNR (one panel per SNR) and accuracy-vs-SNR PNGs."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  files = []
  first = next(iter(results_by_model.values()))
  snr_keys = list(first['vs_pnr'])
  if snr_keys:
    fig, axes = plt.subplots(1, len(snr_keys), figsize=(4.2 * len(snr_keys),
                                                         3.4), squeeze=False)
    for ax, s in zip(axes[0], snr_keys):
      for i, (name, res) in enumerate(results_by_model.items()):
        curve = res['vs_pnr'].get(s)
        if curve is None:
          continue
        color = f'C{i}'
        ax.plot(curve['pnr'], np.array(curve['pgd']) * 100, '-o', ms=3,
                color=color, label=f'{name} PGD')
        ax.plot(curve['pnr'], np.array(curve['fgm']) * 100, '--', color=color,
                label=f'{name} FGM')
      ax.set_title(f'SNR {s} dB')
      ax.set_xlabel('PNR (dB)')
      ax.set_ylim(0, 100)
      ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('accuracy (%)')
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    files.append('accuracy_vs_pnr.png')
    fig.savefig(os.path.join(directory, files[-1]), dpi=110)
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for i, (name, res) in enumerate(results_by_model.items()):
    curve = res['vs_snr']
    ax.plot(curve['snr'], np.array(curve['clean']) * 100, '-', color=f'C{i}',
            label=f'{name} clean')
    ax.plot(curve['snr'], np.array(curve['pgd']) * 100, ':', color=f'C{i}',
            label=f'{name} PGD @ {res["pnr_db"]:g} dB PNR')
  ax.set_xlabel('SNR (dB)')
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  files.append('accuracy_vs_snr.png')
  fig.savefig(os.path.join(directory, files[-1]), dpi=110)
  plt.close(fig)
  return files


def write_report(results_by_model: dict, directory: str, *, title: str,
                 params_by_model: Optional[dict] = None,
                 figures: Optional[dict] = None) -> None:
  """Writes `results.json`, `report.md` and the PNG plots into `directory`.

  Args:
    results_by_model: display name -> `RadioEvaluator.protocol` results.
    directory: output directory.
    title: the report's heading.
    params_by_model: display name -> parameter count (optional column).
    figures: `{heading: PNG file name}` already in `directory`, linked at
      the end.
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'results.json'), 'w') as f:
    json.dump(results_by_model, f, indent=2, sort_keys=True)
  plots = _plot(results_by_model, directory)
  first = next(iter(results_by_model.values()))
  pnr = first['pnr_db']
  lines = [f'# {title}', '',
           f'{first["num_examples"]} test examples. Attacks are L2 with the '
           'per-example budget ε = ‖x‖·10^((PNR − SNR)/20); PGD has a '
           'random start. ‖∇ₓCE‖₂ is the mean input-gradient norm on clean '
           'inputs.', '',
           f'| model | parameters | clean (%) | FGM @ {pnr:g} dB (%) | '
           f'PGD @ {pnr:g} dB (%) | ‖∇ₓCE‖₂ |',
           '|---|---|---|---|---|---|']
  for name, res in results_by_model.items():
    acc = res['accuracy']
    count = (params_by_model or {}).get(name)
    lines.append(f'| {name} | {f"{count:,}" if count else "-"} | '
                 f'{100 * acc["clean"]:.2f} | {100 * acc["fgm"]:.2f} | '
                 f'{100 * acc["pgd"]:.2f} | {res["grad_norm"]:.4f} |')
  for s in first['vs_pnr']:
    pnrs = first['vs_pnr'][s]['pnr']
    lines += ['', f'Accuracy (%) vs PNR at SNR {s} dB (FGM / PGD):', '',
              '| model | clean | ' + ' | '.join(f'{p:g} dB' for p in pnrs)
              + ' |', '|---|---|' + '---|' * len(pnrs)]
    for name, res in results_by_model.items():
      c = res['vs_pnr'].get(s)
      if c:
        cells = [f'{100 * a:.1f} / {100 * b:.1f}'
                 for a, b in zip(c['fgm'], c['pgd'])]
        lines.append(f'| {name} | {100 * c["clean"]:.1f} | '
                     + ' | '.join(cells) + ' |')
  lines += ['', 'Accuracy (%) vs SNR, clean / PGD:', '',
            '| SNR (dB) | ' + ' | '.join(results_by_model) + ' |',
            '|---|' + '---|' * len(results_by_model)]
  for j, s in enumerate(first['vs_snr']['snr']):
    cells = [f'{100 * r["vs_snr"]["clean"][j]:.1f} / '
             f'{100 * r["vs_snr"]["pgd"][j]:.1f}'
             for r in results_by_model.values()]
    lines.append(f'| {s:g} | ' + ' | '.join(cells) + ' |')
  lines += [''] + [f'![{p}]({p})' for p in plots] + ['']
  lines += reports.figure_lines(figures)
  with open(os.path.join(directory, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))
  logging.info('Wrote %s/report.md with %s.', directory, plots)
