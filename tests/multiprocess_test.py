"""Two JAX processes on localhost train exactly as one process.

`main.py` launched twice with `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`
and `JAX_PROCESS_ID` (2 CPU devices each, gloo collectives) against one
process with 4 CPU devices: the same global batch, split by process then by
device, must give the same parameters after three training steps (the
gradients and BatchNorm statistics all-reduced over both processes),
written to one checkpoint directory that a single process then reads.
A process that reaches its first collective long after the other (a slow
compile on a loaded machine) must be waited for, not abort the run.
"""

import os
import re
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


def _excerpt(out: str) -> str:
  """The error lines of a failed process (glog E/F lines, exceptions), then
  its last lines: an abort's thread dump would otherwise hide the cause."""
  lines = out.splitlines()
  errors = [line for line in lines
            if re.match(r'[EF]\d{4} ', line) or 'Error' in line]
  # Where each thread of an abort's dump was in Orbax or jard.
  frames = [line for line in lines
            if line.lstrip().startswith(('File', 'Thread')) and (
                'orbax' in line or 'jard' in line or 'Thread' in line)]
  return ('\n'.join(errors[:30]) + '\n...\n' + '\n'.join(frames[-60:])
          + '\n...\n' + out[-1500:])


def _finish(procs):
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT)[0])
  finally:
    for proc in procs:
      proc.kill()
  failed = [f'process {i} (exit {proc.returncode}):\n{_excerpt(out)}'
            for i, (proc, out) in enumerate(zip(procs, outputs))
            if proc.returncode != 0]
  # Every failed process: the first to fail is often not the first listed.
  assert not failed, '\n\n'.join(failed)
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


LATE_PEER = """
import sys, time
import jax
import numpy as np
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jard import parallel
parallel.connect_processes()
if jax.process_index() == 1:
  time.sleep(40)  # e.g. a much slower compile of the first train step
mean = jax.pmap(lambda x: jax.lax.pmean(x, 'i'), 'i')(
    np.full(jax.local_device_count(), jax.process_index(), np.float32))
print('mean', np.asarray(mean.addressable_data(0)).item())
"""


def test_a_late_process_is_waited_for_at_its_first_collective():
  """Without `connect_processes`, gloo's fixed 30 s connect timeout aborts
  both processes here (jaxlib 0.10)."""
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  procs = [subprocess.Popen([sys.executable, '-c', LATE_PEER, address, str(i)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  for out in _finish(procs):
    assert 'mean 0.5' in out, _excerpt(out)
