r"""Where a jard ResNet-18 forward+backward spends its time on CPU.

The attack gradient (eval-mode BatchNorm, CE loss, gradient w.r.t. the
input) is what every PGD step of training and evaluation repeats. It is
traced with `jax.profiler` on one pinned thread, and the XLA:CPU thunk times
(read with xprof, a benchmarks-only dependency: `pip install xprof`) are
grouped by op kind (convolution, matrix product or other), network stage and
direction, from each thunk's HLO metadata; so is the training pass
(parameter gradient, train-mode BatchNorm). The gradient inside a
`lax.fori_loop` (rolled and unrolled) is timed too, and with PyTorch
installed the same input gradient and training pass of `torch_ref`'s
ResNet-18 (one thread). The table goes to
`benchmarks/results/profile_step_cpu.md`.

    taskset -c 0 python benchmarks/profile_step.py
"""

import collections
import glob
import os
import re
import tempfile
import time

import single_thread  # first: it sets XLA_FLAGS before jax is imported

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = single_thread.HERE
from jard import models  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = 32
CALLS = 2
LOOP = 2


def thunk_milliseconds(trace_dir: str) -> dict:
  """Per-call milliseconds of every XLA thunk in the trace."""
  import json  # pylint: disable=g-import-not-at-top
  from xprof.convert import raw_to_tool_data  # pylint: disable=g-import-not-at-top
  paths = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                    recursive=True)
  data, _ = raw_to_tool_data.xspace_to_tool_data(paths, 'trace_viewer', {})
  totals = collections.Counter()
  for event in json.loads(data)['traceEvents']:
    if event.get('ph') == 'X' and 'dur' in event and not event[
        'name'].startswith(('Thunk', 'Threadpool', '$')):
      totals[event['name']] += event['dur'] / CALLS / 1e3
  return totals


def _median_ms(fn, calls: int = 3) -> float:
  """Median wall milliseconds of `fn()` after one warm-up call."""
  fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return sorted(times)[len(times) // 2]


def _op_times(fn, *args) -> collections.Counter:
  """Per-call thunk milliseconds of jitted `fn(*args)`, summed by (op kind,
  network stage, direction), traced with `jax.profiler`."""
  hlo = fn.lower(*args).compile().as_text()
  # Thunk name -> the JAX op it came from (HLO metadata).
  origin = dict(re.findall(r'%([\w.-]+) = \S+ \w[\w-]*\([^\n]*?op_name="([^"]+)"',
                           hlo))
  trace_dir = tempfile.mkdtemp()
  jax.profiler.start_trace(trace_dir)
  for _ in range(CALLS):
    jax.block_until_ready(fn(*args))
  jax.profiler.stop_trace()
  groups = collections.Counter()
  for name, ms in thunk_milliseconds(trace_dir).items():
    op = origin.get(name, '?')
    # conv_ops runs small output maps (stage 4) as matrix products.
    kind = ('convolution' if 'conv_general_dilated' in op
            else 'matrix product' if 'dot_general' in op else 'other')
    stage = re.search(r'(stem|stage\d|head)', op)
    direction = 'backward' if 'transpose' in op else 'forward'
    if op == '?':
      # XLA:CPU rewrites the parameter gradients' convolutions (batch and
      # features swapped: a YNNPACK fusion fed by transposing copies of the
      # activations and output gradients) and drops their metadata.
      kind = 'convolution' if name.startswith('ynn_fusion') else 'other'
      direction = 'no metadata (parameter gradient)'
    groups[kind, stage.group(1) if stage else '-', direction] += ms
  return groups


def _op_table(groups: collections.Counter) -> list[str]:
  """Markdown rows of the groups of at least 0.5% of the total."""
  total = sum(groups.values())
  lines = ['| op | stage | direction | ms | % |', '|---|---|---|---|---|']
  for (kind, stage, direction), ms in sorted(groups.items(),
                                             key=lambda kv: -kv[1]):
    if ms >= 0.005 * total:
      lines.append(f'| {kind} | {stage} | {direction} | {ms:.1f} | '
                   f'{100 * ms / total:.1f} |')
  return lines


def _torch_milliseconds():
  """PyTorch's milliseconds for the works `main` times (same keys), with
  its version under 'version'; {} without PyTorch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  from torch_ref import models as torch_models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  net = torch_models.MODELS['resnet18'](10)
  x = torch.rand(BATCH, 3, 32, 32)
  y = torch.zeros(BATCH, dtype=torch.long)

  def input_gradient():
    net.eval()
    z = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net(z)[0], y)
    torch.autograd.grad(loss, z)

  def training_pass():
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x)[0], y)
    torch.autograd.grad(loss, list(net.parameters()))

  one = x[:1].clone()

  def forward_one():
    net.eval()
    with torch.no_grad():
      net(one)

  def gradient_one():
    net.eval()
    z = one.clone().requires_grad_(True)
    torch.autograd.grad(net(z)[0].logsumexp(1).sum(), z)

  return {'version': f'torch {torch.__version__}',
          'input gradient': _median_ms(input_gradient),
          'training pass': _median_ms(training_pass),
          'batch-1 forward': _median_ms(forward_one, 9),
          'batch-1 input gradient': _median_ms(gradient_one, 9)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}; this script '
                         'takes none (see --help)')
  model = models.create_model('resnet18', 10)
  variables = models.init_variables(model, jax.random.key(0), (32, 32, 3))
  x = jax.random.uniform(jax.random.key(1), (BATCH, 32, 32, 3))
  y = jnp.zeros((BATCH,), jnp.int32)

  # The weights are arguments, as in jard's steps (closed-over weights
  # would be compile-time constants, and XLA folds work on them).
  def loss(x, variables):
    logits = model.apply(variables, x, train=False).logits
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(BATCH), y])

  grad = jax.jit(jax.grad(loss))
  wall_ms = _median_ms(lambda: grad(x, variables).block_until_ready())

  # The other half of a training step: the parameter gradient with
  # train-mode BatchNorm (batch statistics), once per batch.
  def train_loss(params):
    out, _ = model.apply({'params': params,
                          'batch_stats': variables['batch_stats']}, x,
                         train=True, mutable=['batch_stats'])
    return -jnp.mean(jax.nn.log_softmax(out.logits)[jnp.arange(BATCH), y])
  train_grad = jax.jit(jax.grad(train_loss))
  train_ms = _median_ms(lambda: jax.block_until_ready(
      train_grad(variables['params'])))

  # One image: what AutoAttack's later attacks run on once few points are
  # left (its batches shrink to the survivors).
  one = x[:1]
  forward_one = jax.jit(lambda z, v: model.apply(v, z, train=False).logits)
  gradient_one = jax.jit(jax.grad(lambda z, v: jnp.sum(jax.nn.logsumexp(
      model.apply(v, z, train=False).logits, axis=-1))))
  jard_ms = {
      'input gradient': wall_ms, 'training pass': train_ms,
      'batch-1 forward': _median_ms(
          lambda: forward_one(one, variables).block_until_ready(), 9),
      'batch-1 input gradient': _median_ms(
          lambda: gradient_one(one, variables).block_until_ready(), 9)}
  # The same gradient as PGD runs it: LOOP steps of a `fori_loop`, rolled
  # (a while loop, as jard's attacks) and unrolled; ms per gradient.
  def pgd(unroll):
    def run(z, v):
      step = lambda i, z: z + 1e-3 * jnp.sign(jax.grad(loss)(z, v))
      return jax.lax.fori_loop(0, LOOP, step, z, unroll=unroll)
    return jax.jit(run)
  loop_ms = {}
  for unroll in (False, True):
    fn = pgd(unroll)
    loop_ms[unroll] = _median_ms(
        lambda: fn(x, variables).block_until_ready()) / LOOP
  torch_ms = _torch_milliseconds()
  groups = _op_times(grad, x, variables)
  train_groups = _op_times(train_grad, variables['params'])
  total = sum(groups.values())
  conv = sum(v for k, v in groups.items()
             if k[0] in ('convolution', 'matrix product'))
  lines = [
      '# Profile of a jard ResNet-18 forward+backward on CPU', '',
      f'jax {jax.__version__}, one pinned thread, batch {BATCH}, the input '
      'gradient of the CE loss with eval-mode BatchNorm (one PGD step), '
      f'XLA thunk times from `jax.profiler` per call (mean of {CALLS}). '
      f'Wall time of one call: {wall_ms:.0f} ms; thunks: {total:.0f} ms.', '',
      f'**Convolutions and matrix products: {conv:.0f} ms, '
      f'{100 * conv / total:.1f}% of the thunk time.**', '',
      'Against PyTorch (' + torch_ms.get('version', 'not installed') +
      ', one thread, `benchmarks/torch_ref/models.py`; the training pass is '
      'the parameter gradient with train-mode BatchNorm on the same batch; '
      'batch 1 is one image, what AutoAttack\'s later attacks run on):', '',
      '| work | jard ms | PyTorch ms | jard / PyTorch speed |',
      '|---|---|---|---|'] + [
          f'| {work} | {ms:.1f} | '
          + (f'{torch_ms[work]:.1f} | {torch_ms[work] / ms:.2f} |'
             if work in torch_ms else '- | - |')
          for work, ms in jard_ms.items()] + ['',
      f'Inside a `lax.fori_loop` of {LOOP} PGD steps: {loop_ms[False]:.0f} ms '
      f'per gradient rolled (a while loop, as jard\'s attacks run), '
      f'{loop_ms[True]:.0f} ms with `unroll=True`.', '',
      'The input gradient, by op:', ''] + _op_table(groups) + ['',
      'The training pass, by op (thunks: '
      f'{sum(train_groups.values()):.0f} ms):', ''] + _op_table(train_groups)
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(HERE, 'results', 'profile_step_cpu.md'), 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  app.run(main)
