r"""Times the README's main job and records its report.

Runs `python main.py --config=configs/quickstart.py` in a fresh workdir (a
subprocess, exactly as a user would), then writes
`benchmarks/results/quickstart.md` with the wall time, the machine and the
run's `report.md`, and copies its plots next to it (the README shows them).

    python benchmarks/quickstart.py [--workdir=runs/bench_quickstart]
"""

import os
import platform
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', 'runs/bench_quickstart', 'Fresh work directory.')

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PLOTS = ('accuracy_vs_pnr.png', 'accuracy_vs_snr.png')


def main(_):
  shutil.rmtree(FLAGS.workdir, ignore_errors=True)
  command = [sys.executable, 'main.py', '--config=configs/quickstart.py',
             f'--workdir={FLAGS.workdir}', '--config.progress_bar=False']
  tic = time.time()
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  wall = time.time() - tic
  workdir = os.path.join(REPO, FLAGS.workdir)
  with open(os.path.join(workdir, 'report.md')) as f:
    report = f.read()
  results = os.path.join(HERE, 'results')
  for name in PLOTS:
    shutil.copy(os.path.join(workdir, name),
                os.path.join(results, f'quickstart_{name}'))
    report = report.replace(f']({name})', f'](quickstart_{name})')
  report = report.replace('# Comparison', '## Report: comparison', 1)
  lines = [
      '# The quickstart (`configs/quickstart.py`): wall time and report', '',
      '`python main.py --config=configs/quickstart.py` on a fresh workdir, '
      'data generation, compilation and evaluation included.', '',
      f'- **wall time: {wall / 60:.1f} min** ({wall:.0f} s)',
      f'- machine: {platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores, Python {platform.python_version()}',
      f'- command: `{" ".join(command[1:])}`', '', report]
  with open(os.path.join(results, 'quickstart.md'), 'w') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
