r"""ResNet-18 forward passes and input gradients at AutoAttack's tail batches.

AutoAttack's later attacks (APGD-T, FAB-T, Square) run on the few points
still robust. `jard.evaluate_autoattack` pads such a tail to the next size
`devices × 2^k` (5 points run as 8, the padding masked), so that it compiles
at most log2(batch) shapes per attack; torchattacks runs the 5. This times,
on one pinned thread and in one process (jard and PyTorch calls
interleaved), a jard ResNet-18 forward pass and input gradient (weights as
arguments, as in jard's attacks) and `torch_ref`'s at batch sizes 1–8, so
that the cost of a padded tail can be read against PyTorch's unpadded one.
The table goes to `benchmarks/results/small_batches_cpu.md`.

    taskset -c 0 python benchmarks/small_batches.py
"""

import os

import single_thread  # first: it sets XLA_FLAGS before jax is imported

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = single_thread.HERE
from jard import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch_ref import models as torch_models  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZES = (1, 2, 4, 5, 8)
CALLS = 9


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  torch.set_num_threads(1)
  model = models.create_model('resnet18', 10)
  variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
  forward = jax.jit(lambda z, v: model.apply(v, z, train=False).logits)
  gradient = jax.jit(jax.grad(lambda z, v: jnp.sum(jax.nn.logsumexp(
      model.apply(v, z, train=False).logits, axis=-1))))
  net = torch_models.MODELS['resnet18'](10).eval()

  def torch_forward(x):
    with torch.no_grad():
      net(x)

  def torch_gradient(x):
    z = x.clone().requires_grad_(True)
    torch.autograd.grad(net(z)[0].logsumexp(1).sum(), z)

  rows = []
  for size in SIZES:
    x = jax.random.uniform(jax.random.key(1), (size, 32, 32, 3))
    xt = torch.rand(size, 3, 32, 32)
    works = {
        ('forward', 'jard'): lambda: forward(x, variables).block_until_ready(),
        ('forward', 'torch'): lambda: torch_forward(xt),
        ('input gradient', 'jard'):
            lambda: gradient(x, variables).block_until_ready(),
        ('input gradient', 'torch'): lambda: torch_gradient(xt)}
    ms = single_thread.interleaved_medians(works, CALLS)
    for work in ('forward', 'input gradient'):
      rows.append((work, size, ms[(work, 'jard')], ms[(work, 'torch')]))
      print(rows[-1], flush=True)
  by = {(w, s): (j, t) for w, s, j, t in rows}
  lines = [
      '# ResNet-18 at AutoAttack\'s tail batch sizes, jard against PyTorch',
      '', f'jax {jax.__version__}, torch {torch.__version__}, one pinned '
      f'thread, one process, calls interleaved; median of {CALLS} calls '
      '(ms). The input gradient is that of Σ logsumexp(logits) with '
      'eval-mode BatchNorm, as an attack step takes it.', '',
      '| work | batch | jard ms | PyTorch ms | jard / PyTorch speed |',
      '|---|---|---|---|---|'] + [
          f'| {w} | {s} | {j:.1f} | {t:.1f} | {t / j:.2f} |'
          for w, s, j, t in rows] + [
      '', '5 points padded to 8, as jard runs them, against PyTorch on the 5:',
      '', '| work | jard at 8, ms | PyTorch at 5, ms | jard / PyTorch speed |',
      '|---|---|---|---|'] + [
          f'| {w} | {by[(w, 8)][0]:.1f} | {by[(w, 5)][1]:.1f} | '
          f'{by[(w, 5)][1] / by[(w, 8)][0]:.2f} |'
          for w in ('forward', 'input gradient')]
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(HERE, 'results', 'small_batches_cpu.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
