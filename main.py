r"""Command-line entry point. Kept short: the logic lives in `jard.pipeline`.

    python main.py --config=configs/pgd_at.py[:variant] [--workdir=DIR] \
        [--config.a.b=value ...]

The workdir defaults to `runs/<config file name>[_<variant>]`. Launched as
several processes (a TPU pod slice, or `JAX_COORDINATOR_ADDRESS` /
`JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` set), it first calls
`jax.distributed.initialize()`.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file[:variant].',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Output directory (default: '
                    'runs/<config name>).')
flags.mark_flags_as_required(['config'])

MULTIPROCESS_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
                    'TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS')


def default_workdir(config_arg: str) -> str:
  path, _, variant = config_arg.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if variant:
    name += '_' + ''.join(c if c.isalnum() else '_' for c in variant)
  return os.path.join('runs', name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Too many command-line arguments.')
  if any(os.environ.get(k) for k in MULTIPROCESS_ENV):
    # Only used by CPU devices (a CPU cluster, or the localhost test); GPU
    # and TPU collectives are NCCL / ICI whatever this says.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # JAX reads the coordinator address from the environment but not the
    # process count and id; on TPU slices and SLURM they are discovered.
    env = lambda name: (int(os.environ[name]) if os.environ.get(name)
                        else None)
    jax.distributed.initialize(num_processes=env('JAX_NUM_PROCESSES'),
                               process_id=env('JAX_PROCESS_ID'))
  # Imported after distributed init: jard queries devices at import time.
  from jard import data  # pylint: disable=g-import-not-at-top
  from jard import parallel  # pylint: disable=g-import-not-at-top
  from jard import pipeline  # pylint: disable=g-import-not-at-top
  from jard import validation  # pylint: disable=g-import-not-at-top
  parallel.connect_processes()
  workdir = FLAGS.workdir or default_workdir(FLAGS['config'].config_filename)
  logging.info('process %d of %d; devices %s', jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    pipeline.run(FLAGS.config, workdir)
  except (validation.ConfigError, data.DataError, FileNotFoundError) as e:
    sys.stderr.write(f'jard: error: {e}\n')
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
