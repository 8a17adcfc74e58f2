"""Imported first by the one-thread CPU benchmarks, before jax.

Pins XLA:CPU to one thread (set before jax initialises its backend) and puts
the repository and `benchmarks/` (for `torch_ref`) on the import path.
"""

import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_cpu_multi_thread_eigen=false'
                           ' intra_op_parallelism_threads=1')

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # torch_ref
