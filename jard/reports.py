"""The image evaluation report: `report.md`, `results.json` and a PNG curve.

`write_report` takes `{entry: summary}`, where an entry is a checkpoint of
one run ('last', 'best') or a model of a comparison, and a summary is what
`pipeline.evaluate_checkpoints` returns for images:

    {'step', 'num_params',
     'accuracy': {attack: fraction, 'worst_case', 'num_examples', ...},
     'seconds': {attack: seconds},
     'autoattack': evaluate_autoattack.Result.summary(),   # optional
     'curve': {'epsilons': [ε...], attack: [accuracy...]}}  # optional

The report has one table per entry (accuracy and seconds per attack), the
AutoAttack cascade (robust accuracy after each attack, seconds, images/s,
failed sanity checks), `robust_accuracy_vs_eps.png`, and links to the
figures the pipeline drew next to it (`training_curves.png` from the run's
`metrics.jsonl`, the CAM or attention grids of the methods that have them).
"""

import json
import os
from typing import Optional

from absl import logging
import numpy as np

PLOT = 'robust_accuracy_vs_eps.png'
CURVES = 'training_curves.png'


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_training_curves(logdir: str, path: str) -> bool:
  """Loss, accuracies and learning rate vs step, from `metrics.jsonl`.

  Panels: the training loss; every `train/*accuracy` (clean and adversarial
  on the training batches) and `select/*` accuracy (the held-out split);
  the learning rate. Returns False (and draws nothing) when the run wrote
  no metrics, e.g. a run that was only evaluated.
  """
  from jard import metric_writers  # pylint: disable=g-import-not-at-top
  try:
    scalars = metric_writers.read_scalars(logdir)
  except OSError:
    return False
  if not scalars.get('train/loss'):
    return False
  accuracies = sorted(k for k in scalars if k.endswith('accuracy')
                      and k.startswith(('train/', 'select/')))
  panels = [('loss', ['train/loss']), ('accuracy (%)', accuracies),
            ('learning rate', ['train/learning_rate'])]
  panels = [(label, [k for k in keys if scalars.get(k)])
            for label, keys in panels]
  panels = [(label, keys) for label, keys in panels if keys]
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4),
                           squeeze=False)
  for ax, (label, keys) in zip(axes[0], panels):
    for key in keys:
      steps, values = zip(*_last_per_step(scalars[key]))
      scale = 100 if label.startswith('accuracy') else 1
      ax.plot(steps, scale * np.asarray(values),
              'o-' if key.startswith('select/') else '-', ms=3, label=key)
    ax.set_xlabel('step')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def _last_per_step(points):
  """A resumed run may log a step twice: keep its last value, in order."""
  by_step = dict(points)
  return sorted(by_step.items())


def _plot(results: dict, directory: str) -> bool:
  """Robust accuracy vs ε of every entry's curve; AutoAttack as markers."""
  curves = {k: v['curve'] for k, v in results.items()
            if isinstance(v, dict) and v.get('curve')}
  if not curves:
    return False
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  styles = ['-o', '--s', ':^', '-.v']
  for i, (entry, curve) in enumerate(curves.items()):
    eps255 = np.array(curve['epsilons']) * 255
    attacks = [k for k in curve if k != 'epsilons']
    for j, attack in enumerate(attacks):
      ax.plot(eps255, 100 * np.array(curve[attack]), styles[j % len(styles)],
              ms=3, color=f'C{i}', label=f'{entry}: {attack}')
    aa = results[entry].get('autoattack')
    if aa:
      ax.plot([aa['epsilon'] * 255], [100 * aa['robust_accuracy']], '*',
              ms=11, color=f'C{i}', label=f'{entry}: AutoAttack '
              f'{aa["version"]}')
  ax.set_xlabel('ε (×1/255, L∞)')
  ax.set_ylabel('robust accuracy (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(directory, PLOT), dpi=110)
  plt.close(fig)
  return True


def _entry_lines(entry: str, summary: dict) -> list[str]:
  accs, seconds = summary['accuracy'], summary.get('seconds', {})
  params = summary.get('num_params')
  heading = f'## {entry}'
  details = [f'step {summary["step"]}'] if 'step' in summary else []
  if params:
    details.append(f'{params:,} parameters')
  details.append(f'{accs.get("num_examples", "?")} test examples')
  lines = [f'{heading} ({", ".join(details)})', '',
           '| attack | accuracy (%) | seconds |', '|---|---|---|']
  for name, value in accs.items():
    if name == 'num_examples':
      continue
    secs = seconds.get(name)
    lines.append(f'| {name} | {100 * value:.2f} | '
                 f'{"-" if secs is None else f"{secs:.1f}"} |')
  aa = summary.get('autoattack')
  if aa:
    settings = aa.get('settings', {})
    reduced = ''
    if settings and (settings.get('n_iter') != 100
                     or settings.get('n_queries') != 5000):
      reduced = (f' **with reduced settings** ({settings["n_iter"]} '
                 f'iterations, {settings["n_queries"]} Square queries; the '
                 'reference uses 100 and 5000)')
    lines += ['', f'AutoAttack {aa["version"]}{reduced} at ε = '
              f'{aa["epsilon"]:.5f} on {aa["num_examples"]} examples, '
              f'{aa["images_per_second"]:.2f} images/s. Robust accuracy after '
              'each attack of the cascade (each attacks only the points still '
              'robust):', '',
              '| after | robust accuracy (%) | seconds |', '|---|---|---|']
    for name in aa.get('order', list(aa['accuracy'])):
      value = aa['accuracy'][name]
      lines.append(f'| {name} | {100 * value:.2f} | '
                   f'{aa["seconds"][name]:.1f} |')
    for check, message in aa.get('warnings', {}).items():
      lines.append(f'\n**Check `{check}` failed**: {message}')
    if not aa.get('warnings'):
      lines.append('\nAll sanity checks passed (randomness, softmax outputs, '
                   'zero gradients, class count, Square vs white-box, final '
                   'perturbation).')
  lines.append('')
  return lines


def write_report(results: dict, directory: str, *, title: str,
                 figures: Optional[dict] = None) -> None:
  """Writes `results.json`, `report.md` and the robustness curve.

  `figures`: `{heading: file name}` of PNGs already in `directory`, linked
  at the end of the report.
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'results.json'), 'w') as f:
    json.dump(results, f, indent=2, sort_keys=True)
  lines = [f'# {title}', '']
  for entry, summary in results.items():
    if isinstance(summary, dict) and 'accuracy' in summary:
      lines += _entry_lines(entry, summary)
  if _plot(results, directory):
    lines += ['## Robust accuracy vs ε', '', f'![robust accuracy vs ε]({PLOT})',
              '']
  lines += figure_lines(figures)
  with open(os.path.join(directory, 'report.md'), 'w') as f:
    f.write('\n'.join(lines))
  logging.info('Wrote %s/report.md.', directory)


def figure_lines(figures: Optional[dict]) -> list[str]:
  """Markdown sections linking `{heading: PNG file name}`."""
  lines = []
  for heading, name in (figures or {}).items():
    lines += [f'## {heading}', '', f'![{heading}]({name})', '']
  return lines
