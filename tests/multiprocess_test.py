"""Two JAX processes on localhost train exactly as one process.

`main.py` launched twice with `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`
and `JAX_PROCESS_ID` (2 CPU devices each, gloo collectives) against one
process with 4 CPU devices: the same global batch, split by process then by
device, must give the same parameters after three training steps (the
gradients and BatchNorm statistics all-reduced over both processes),
written to one checkpoint directory that a single process then reads.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from configs import pgd_at
from jard import models
from jard import teachers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _main(workdir, npz_path, devices, **env):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **env,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/pgd_at.py:quick',
       f'--workdir={workdir}', '--config.stages=train',
       f'--config.dataset.train=npz:{npz_path}',
       f'--config.dataset.test=npz:{npz_path}',
       '--config.num_train_steps=3', '--config.checkpoint_every_steps=3',
       # Natural training: PGD's sign() would turn the last-bit differences
       # of another reduction order into different adversarial examples.
       '--config.method.name=natural'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _finish(procs):
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT)[0])
  finally:
    for proc in procs:
      proc.kill()
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-3000:]
  return outputs


def _params(workdir):
  """The saved parameters, read as a single-process evaluation reads them."""
  train_dir = os.path.join(workdir, 'train')
  saved = os.listdir(os.path.join(train_dir, 'checkpoints'))
  assert [d for d in saved if not d.startswith('.')] == ['3'], saved
  model = models.create_model(pgd_at.get_config('quick').model.name, 10)
  return teachers.load_variables(train_dir, model, (32, 32, 3),
                                 which='last')['params']


def test_two_processes_give_the_parameters_of_one(npz_path, tmp_path):
  port = _free_port()
  two = [_main(tmp_path / 'two', npz_path, 2,
               JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
               JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i))
         for i in range(2)]
  one = _main(tmp_path / 'one', npz_path, 4)
  outputs = _finish(two + [one])
  assert 'process 1 of 2' in outputs[1] and 'process 0 of 1' in outputs[2]
  two_params, one_params = _params(tmp_path / 'two'), _params(tmp_path / 'one')
  # The all-reduce sums in another order across processes: float tolerance.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               two_params, one_params)
