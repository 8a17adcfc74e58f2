r"""The parts of a PGD-AT / RSLAD training step, jard against PyTorch, on CPU.

A PGD-10 AT step at batch B is 10 input gradients (eval-mode BatchNorm) and
one training pass (parameter gradient, train-mode BatchNorm); an RSLAD step
adds a teacher forward pass and a second training pass. This times each part
for a ResNet-18, jard (weights as arguments) against `torch_ref`'s, on one
pinned thread in one process, the calls interleaved (median of 3), and
writes `benchmarks/results/step_parts_cpu.md`.

    taskset -c 0 python benchmarks/step_parts.py [batch, default 128]
"""

import os, sys, time
os.environ['XLA_FLAGS'] = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
import jax, jax.numpy as jnp, numpy as np, torch
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE)); sys.path.insert(0, HERE)
from jard import models
from torch_ref import models as torch_models
torch.set_num_threads(1)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
model = models.create_model('resnet18', 10)
v = models.init_variables(model, jax.random.key(0), (32, 32, 3))
x = jax.random.uniform(jax.random.key(1), (B, 32, 32, 3)); y = jnp.zeros((B,), jnp.int32)
def ce(logits): return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(B), y])
fwd = jax.jit(lambda z, v: model.apply(v, z, train=False).logits)
igrad = jax.jit(jax.grad(lambda z, v: ce(model.apply(v, z, train=False).logits)))
def tl(p):
  out, _ = model.apply({'params': p, 'batch_stats': v['batch_stats']}, x, train=True, mutable=['batch_stats'])
  return ce(out.logits)
tgrad = jax.jit(jax.grad(tl))
net = torch_models.MODELS['resnet18'](10)
xt = torch.rand(B, 3, 32, 32); yt = torch.zeros(B, dtype=torch.long)
def t_fwd():
  net.eval()
  with torch.no_grad(): net(xt)
def t_igrad():
  net.eval(); z = xt.clone().requires_grad_(True)
  torch.autograd.grad(torch.nn.functional.cross_entropy(net(z)[0], yt), z)
def t_tgrad():
  net.train(); torch.autograd.grad(torch.nn.functional.cross_entropy(net(xt)[0], yt), list(net.parameters()))
works = {('forward', 'jard'): lambda: fwd(x, v).block_until_ready(), ('forward', 'torch'): t_fwd,
         ('input gradient', 'jard'): lambda: igrad(x, v).block_until_ready(), ('input gradient', 'torch'): t_igrad,
         ('training pass', 'jard'): lambda: jax.block_until_ready(tgrad(v['params'])), ('training pass', 'torch'): t_tgrad}
for f in works.values(): f()
times = {k: [] for k in works}
for _ in range(3):
  for k, f in works.items():
    s = time.perf_counter(); f(); times[k].append(1e3 * (time.perf_counter() - s))
rows = []
for w in ('forward', 'input gradient', 'training pass'):
  j = np.median(times[(w, 'jard')]); t = np.median(times[(w, 'torch')])
  rows.append(f'| {w} | {B} | {j:.0f} | {t:.0f} | {t / j:.2f} |')
text = '\n'.join([
    '# The parts of a training step, ResNet-18, jard against PyTorch', '',
    f'jax {jax.__version__}, torch {torch.__version__}, one pinned thread, '
    'one process, calls interleaved, median of 3 (ms).', '',
    '| work | batch | jard ms | PyTorch ms | jard / PyTorch speed |',
    '|---|---|---|---|---|'] + rows) + '\n'
with open(os.path.join(HERE, 'results', 'step_parts_cpu.md'), 'w') as f:
  f.write(text)
print(text)
