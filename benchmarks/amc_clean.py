r"""Are the synthetic radio classes learnable? A clean AMC transformer run.

Trains the ATARD student transformer (`amc_student`, 228k parameters)
without attacks on the synthetic RadioML-2016.10A look-alike and writes
`benchmarks/results/amc_clean.md` with the clean accuracy per SNR. The
synthetic set is meant to be like the real one: high accuracy at high SNR
(the target is 70–99% at SNR ≥ 10 dB, not 100%: QAM16/QAM64 and AM/WBFM stay
confusable) and chance (1/11) in the noise at −20 dB.

    python benchmarks/amc_clean.py [--per_key=500] [--epochs=20]
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import atard as atard_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from jard import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer('per_key', 500, 'Synthetic examples per (mod, SNR).')
flags.DEFINE_integer('epochs', 20, 'Training epochs.')
flags.DEFINE_string('model', 'amc_student', 'Registry model.')
flags.DEFINE_string('workdir', 'runs/bench_amc_clean', 'Work directory.')

HERE = os.path.dirname(os.path.abspath(__file__))


def make_config():
  config = atard_config.get_config()
  config.dataset.source = f'amc_synthetic:per_key={FLAGS.per_key}'
  config.model.name = FLAGS.model
  config.method = type(config.method)({'name': 'natural'})
  config.teachers = type(config.teachers)()
  config.baselines = type(config.baselines)()
  config.attack.train.budget = 'absolute'
  config.num_epochs = FLAGS.epochs
  config.progress_bar = False
  config.log_every_steps = 200
  config.select.metric = ''
  config.eval.num_examples = 11000
  config.eval.radio.snrs = '10'
  config.eval.radio.pnrs = '-10'
  return config


def main(_):
  config = make_config()
  tic = time.time()
  results = pipeline.run(config, FLAGS.workdir)
  wall = time.time() - tic
  radio = results['last']['radio']
  curve = radio['vs_snr']
  snr = np.array(curve['snr'])
  clean = np.array(curve['clean'])
  with open(os.path.join(FLAGS.workdir, 'train', 'train_stats.json')) as f:
    stats = json.load(f)
  lines = [
      '# Clean AMC transformer on the synthetic RadioML look-alike', '',
      f'`python benchmarks/amc_clean.py --per_key={FLAGS.per_key} '
      f'--epochs={FLAGS.epochs} --model={FLAGS.model}`', '',
      f'- data: `{config.dataset.source}` '
      f'({FLAGS.per_key * 110} train / {FLAGS.per_key * 110} test; '
      f'evaluated on a fixed random {radio["num_examples"]})',
      f'- model: {FLAGS.model}, {results["last"]["num_params"]:,} parameters;'
      f' AdamW {config.optimizer.lr}, cosine, batch {config.batch_size}, '
      f'{FLAGS.epochs} epochs, no attack',
      f'- machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores, {jax.devices()[0].platform}; wall '
      f'{wall / 60:.1f} min, {stats["images_per_sec"]:.0f} training images/s',
      '',
      f'**Clean accuracy at SNR ≥ 10 dB: {100 * clean[snr >= 10].mean():.1f}%'
      f'**; at −20 dB: {100 * clean[snr == -20].mean():.1f}% (chance 9.1%); '
      f'over all SNRs: {100 * radio["accuracy"]["clean"]:.1f}%.', '',
      '| SNR (dB) | ' + ' | '.join(f'{s:g}' for s in snr) + ' |',
      '|---|' + '---|' * len(snr),
      '| clean (%) | ' + ' | '.join(f'{100 * c:.1f}' for c in clean) + ' |',
      '']
  os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
  with open(os.path.join(HERE, 'results', 'amc_clean.md'), 'w') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
