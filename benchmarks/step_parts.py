r"""The parts of a PGD-AT / RSLAD training step, jard against PyTorch, on CPU.

A PGD-10 AT step at batch B is 10 input gradients (eval-mode BatchNorm) and
one training pass (parameter gradient, train-mode BatchNorm); an RSLAD step
adds a teacher forward pass and a second training pass. This times each part
for a ResNet-18, jard (weights as arguments) against `torch_ref`'s, on one
pinned thread in one process, the calls interleaved (median of 3), and
writes `benchmarks/results/step_parts_cpu.md`.

    taskset -c 0 python benchmarks/step_parts.py [--batch=128]
"""

import os

import single_thread  # first: it sets XLA_FLAGS before jax is imported

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = single_thread.HERE
from jard import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch_ref import models as torch_models  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
CALLS = 3
WORKS = ('forward', 'input gradient', 'training pass')


def _jard_works(batch):
  model = models.create_model('resnet18', 10)
  variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
  x = jax.random.uniform(jax.random.key(1), (batch, 32, 32, 3))
  y = jnp.zeros((batch,), jnp.int32)
  cross_entropy = lambda logits: -jnp.mean(
      jax.nn.log_softmax(logits)[jnp.arange(batch), y])
  forward = jax.jit(lambda z, v: model.apply(v, z, train=False).logits)
  input_gradient = jax.jit(jax.grad(lambda z, v: cross_entropy(
      model.apply(v, z, train=False).logits)))

  def train_loss(params):
    out, _ = model.apply({'params': params,
                          'batch_stats': variables['batch_stats']}, x,
                         train=True, mutable=['batch_stats'])
    return cross_entropy(out.logits)
  training_pass = jax.jit(jax.grad(train_loss))
  return {
      'forward': lambda: forward(x, variables).block_until_ready(),
      'input gradient':
          lambda: input_gradient(x, variables).block_until_ready(),
      'training pass': lambda: jax.block_until_ready(
          training_pass(variables['params']))}


def _torch_works(batch):
  net = torch_models.MODELS['resnet18'](10)
  x = torch.rand(batch, 3, 32, 32)
  y = torch.zeros(batch, dtype=torch.long)

  def forward():
    net.eval()
    with torch.no_grad():
      net(x)

  def input_gradient():
    net.eval()
    z = x.clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(net(z)[0], y), z)

  def training_pass():
    net.train()
    torch.autograd.grad(torch.nn.functional.cross_entropy(net(x)[0], y),
                        list(net.parameters()))
  return {'forward': forward, 'input gradient': input_gradient,
          'training pass': training_pass}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  torch.set_num_threads(1)
  batch = _BATCH.value
  works = {}
  for side, side_works in (('jard', _jard_works(batch)),
                           ('torch', _torch_works(batch))):
    for work, fn in side_works.items():
      works[(work, side)] = fn
  ms = single_thread.interleaved_medians(works, CALLS)
  rows = []
  for work in WORKS:
    jard_ms, torch_ms = ms[(work, 'jard')], ms[(work, 'torch')]
    rows.append(f'| {work} | {batch} | {jard_ms:.0f} | {torch_ms:.0f} | '
                f'{torch_ms / jard_ms:.2f} |')
  text = '\n'.join([
      '# The parts of a training step, ResNet-18, jard against PyTorch', '',
      f'jax {jax.__version__}, torch {torch.__version__}, one pinned thread, '
      f'one process, calls interleaved, median of {CALLS} (ms).', '',
      '| work | batch | jard ms | PyTorch ms | jard / PyTorch speed |',
      '|---|---|---|---|---|'] + rows) + '\n'
  with open(os.path.join(HERE, 'results', 'step_parts_cpu.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
