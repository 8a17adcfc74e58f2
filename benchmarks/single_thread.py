"""Imported first by the one-thread CPU benchmarks, before jax.

Pins XLA:CPU to one thread (set before jax initialises its backend) and puts
the repository and `benchmarks/` (for `torch_ref`) on the import path; and
`interleaved_medians`, the same-process timing the jard-against-PyTorch
comparisons use.
"""

import os
import sys
import time

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_cpu_multi_thread_eigen=false'
                           ' intra_op_parallelism_threads=1')

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # torch_ref


def interleaved_medians(works: dict, calls: int) -> dict:
  """Median wall milliseconds of each `works[key]()`, after one warm-up
  (compiling) call each; the timed calls are interleaved, so drifts of the
  machine hit every work alike."""
  for fn in works.values():
    fn()
  times = {key: [] for key in works}
  for _ in range(calls):
    for key, fn in works.items():
      start = time.perf_counter()
      fn()
      times[key].append(1e3 * (time.perf_counter() - start))
  return {key: sorted(t)[len(t) // 2] for key, t in times.items()}
