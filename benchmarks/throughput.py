r"""Throughput of jard's compiled steps against the same work in PyTorch.

Each row runs in a fresh subprocess (clean compile caches, its own peak
memory) and times one piece of work after a warm-up call, as the median of
`--repeats` calls:

* `train`: one full training step of a method (attack, losses, update) on a
  fixed batch: jard's `train.build` step, exactly what `train.train` runs,
  with the method's own recipe from `configs/<method>.py` (attack steps,
  init, BatchNorm modes) on `--archs`; teachers are random-init `--teacher`
  networks (`amc_teacher` for the AMC transformer). PyTorch rows
  (`benchmarks/torch_ref/steps.py`) exist for PGD-AT, RSLAD and SmaraAD.
* `pgd20`: PGD-20 robust accuracy of a batch (jard's `Evaluator`).
* `autoattack`: AutoAttack standard on `--aa_examples` CIFAR-10 test images
  (jard's `evaluate_autoattack.AutoAttack` against `torchattacks`'
  `AutoAttack`, the same weights), time of the whole run; compiling is
  reported apart.

The ratio column is jard images/s over PyTorch images/s, measured in the
same invocation on the same machine. Peak memory is the process's peak RSS
on CPU, and the device's peak bytes in use on a GPU.

    python benchmarks/throughput.py                      # the ratio table
    python benchmarks/throughput.py --table=methods --batch_size=32 \
        --out=throughput_methods_cpu                     # every method, jard
"""

from concurrent import futures
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

flags.DEFINE_enum('table', 'ratios', ['ratios', 'methods'],
                  '`ratios`: jard and PyTorch side by side (PGD-AT, RSLAD, '
                  'SmaraAD, PGD-20, AutoAttack); `methods`: every method on '
                  'every arch, jard only.')
flags.DEFINE_list('archs', ['resnet18'], 'Student architectures.')
flags.DEFINE_list('methods', [], 'Methods (default: those of the table).')
flags.DEFINE_string('teacher', 'resnet18', 'Teacher of the CNN students.')
flags.DEFINE_integer('batch_size', 128, 'Global batch.')
flags.DEFINE_integer('repeats', 3, 'Timed calls after the warm-up.')
flags.DEFINE_integer('aa_examples', 100, 'AutoAttack test images.')
flags.DEFINE_string('aa_checkpoint', '', 'A jard resnet18 run for the '
                    'AutoAttack rows (default: random init weights).')
flags.DEFINE_string('data_dir', '../shared/data/cifar10', 'npz directory.')
flags.DEFINE_string('out', 'throughput_cpu', 'Result file stem.')
flags.DEFINE_bool('pin_pairs', False, 'Run the jard and PyTorch rows of a '
                  'pair at the same time, each on its own CPU core with one '
                  'thread (jard on core 0, PyTorch on core 1).')
flags.DEFINE_list('kinds', ['train', 'pgd20', 'autoattack'], 'Rows of the '
                  '`ratios` table to run.')
flags.DEFINE_string('row', '', 'Internal: run one row and print its JSON.')
FLAGS = flags.FLAGS

RADIO_ARCHS = ('amc_student',)
RATIO_METHODS = ('pgd_at', 'rslad', 'smaraad')
RADIO_METHODS = ('natural', 'pgd_at', 'trades', 'mart', 'atard', 'ard',
                 'iad', 'rslad', 'adaad', 'smaraad')
# method -> (config module, variant).
CONFIGS = {'smaraad_pp': ('smaraad', 'plus')}


# ---------------------------------------------------------------------------
# Rows (run inside the subprocess). They import jax, jard and torch
# themselves, so that a PyTorch training row's peak memory holds no JAX (the
# PGD-20 and AutoAttack rows import jard on both sides, to share weights).


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jard_peak_mib() -> float:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:  # accelerators
    return stats['peak_bytes_in_use'] / 2**20
  return _rss_mib()


def _torch_peak_mib(torch, device) -> float:
  if device.type == 'cuda':
    return torch.cuda.max_memory_allocated() / 2**20
  return _rss_mib()


def row_config(method: str, arch: str):
  """The method's own recipe on `arch`, batch `--batch_size`."""
  import importlib  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import atard  # pylint: disable=g-import-not-at-top
  module, variant = CONFIGS.get(method, (method, None))
  config = importlib.import_module(f'configs.{module}').get_config(variant)
  config.model.name = arch
  radio = arch in RADIO_ARCHS
  if radio and method != 'atard':
    atard.radio(config)
    config.dataset.source = 'amc_synthetic'
  for name in config.teachers:
    config.teachers[name].model = ml_collections.ConfigDict(
        {'name': 'amc_teacher' if radio else FLAGS.teacher})
  config.batch_size = FLAGS.batch_size
  return config


def _batch(radio: bool, n: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  if radio:  # RadioML vectors are L1-normalised: mean |x| = 1/128.
    return {'image': (rng.normal(size=(n, 2, 128)) / 128).astype(np.float32),
            'label': rng.integers(0, 11, n).astype(np.int32),
            'snr': rng.choice(np.arange(-20, 20, 2), n).astype(np.int32)}
  return {'image': rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def _timed(fn, repeats):
  """(seconds of the first call, median seconds of `repeats` more)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def jard_train_row(method: str, arch: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from jard import methods  # pylint: disable=g-import-not-at-top
  from jard import parallel  # pylint: disable=g-import-not-at-top
  from jard import pipeline  # pylint: disable=g-import-not-at-top
  from jard import teachers as teacher_lib  # pylint: disable=g-import-not-at-top
  from jard import train  # pylint: disable=g-import-not-at-top
  config = row_config(method, arch)
  radio = arch in RADIO_ARCHS
  num_classes = 11 if radio else 10
  batch = _batch(radio, FLAGS.batch_size)
  example_shape = batch['image'].shape[1:]
  teachers = teacher_lib.random_teachers(config, example_shape, num_classes)
  run = train.build(config, model=pipeline.build_model(config, num_classes),
                    method=methods.get_method(method),
                    example_shape=example_shape, num_classes=num_classes,
                    bounds=None if radio else (0.0, 1.0),
                    steps_per_epoch=100, total_steps=100_000,
                    teachers=teachers)
  state = parallel.replicate(run.state)
  sharded = parallel.shard_batch(batch, config.parallel)
  counter = parallel.CompileCounter()

  def step():
    nonlocal state
    state, metrics = run.step(state, sharded, run.step_key,
                              run.teacher_variables)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  step()
  compile_seconds = time.perf_counter() - start
  with counter:
    _, seconds = _timed(step, FLAGS.repeats)
  return {'seconds': seconds, 'compile_seconds': compile_seconds,
          'recompiles': counter.count,
          'attack_steps': config.attack.train.steps}


def _torch_setup(arch, num_classes):
  import torch  # pylint: disable=g-import-not-at-top
  from torch_ref import models as torch_models  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  return torch, torch_models, device


def _to_torch(torch, batch, device):
  x = torch.from_numpy(batch['image'])
  x = x.float() if x.dtype == torch.float32 else (
      x.permute(0, 3, 1, 2).float() / 255.0)
  out = {'x': x.contiguous().to(device),
         'y': torch.from_numpy(batch['label']).long().to(device)}
  if 'snr' in batch:
    out['snr'] = torch.from_numpy(batch['snr']).float().to(device)
  return out


def _sync(torch, device):
  if device.type == 'cuda':
    torch.cuda.synchronize()


def torch_train_row(method: str, arch: str) -> dict:
  from torch_ref import steps as torch_steps  # pylint: disable=g-import-not-at-top
  radio = arch in RADIO_ARCHS
  num_classes = 11 if radio else 10
  torch, torch_models, device = _torch_setup(arch, num_classes)
  config = row_config(method, arch)
  model = torch_models.MODELS[arch](num_classes).to(device)
  teacher = torch_models.MODELS['amc_teacher' if radio else FLAGS.teacher](
      num_classes).to(device).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  optimizer = torch_steps.make_optimizer(model)
  attack = config.attack.train.to_dict()
  data = _to_torch(torch, _batch(radio, FLAGS.batch_size), device)

  def step():
    torch_steps.STEPS[method](model, optimizer, data['x'], data['y'], attack,
                              snr=data.get('snr'), teacher=teacher)
    _sync(torch, device)

  first, seconds = _timed(step, FLAGS.repeats)
  return {'seconds': seconds, 'first_call_seconds': first,
          'threads': torch.get_num_threads(),
          'peak_memory_mib': _torch_peak_mib(torch, device)}


def _cifar_test(n):
  """The first `n` CIFAR-10 test images (`--data_dir`), else random ones."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(FLAGS.data_dir), 'test.npz')
  if os.path.isfile(path):
    with np.load(path) as f:
      return {'image': f['image'][:n],
              'label': f['label'][:n].astype(np.int32)}, 'CIFAR-10 test'
  return _batch(False, n), 'random images'


def _shared_weights(arch):
  """jard variables and a PyTorch state_dict holding the same weights."""
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jard import interop  # pylint: disable=g-import-not-at-top
  from jard import models  # pylint: disable=g-import-not-at-top
  from jard import teachers as teacher_lib  # pylint: disable=g-import-not-at-top
  from torch_ref import models as torch_models  # pylint: disable=g-import-not-at-top
  model = models.create_model(arch, 10)
  torch.manual_seed(0)
  state_dict = torch_models.MODELS[arch](10).state_dict()
  if not FLAGS.aa_checkpoint:
    numpy_dict = {k: v.numpy() for k, v in state_dict.items()}
    return model, interop.convert(arch, numpy_dict, model), state_dict
  variables = teacher_lib.load_variables(
      teacher_lib.resolve_train_dir(FLAGS.aa_checkpoint), model, (32, 32, 3),
      which='last', field='--aa_checkpoint')
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  for path, (key, _) in interop.match(arch, state_dict, model).items():
    value = np.asarray(flat[path])
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif value.ndim == 2:
      value = value.T
    state_dict[key] = torch.from_numpy(np.ascontiguousarray(value))
  return model, variables, state_dict


def jard_pgd20_row(arch: str) -> dict:
  from jard import data as data_lib  # pylint: disable=g-import-not-at-top
  from jard import evaluate  # pylint: disable=g-import-not-at-top
  batch, _ = _cifar_test(FLAGS.batch_size)
  ds = data_lib.ImageDataset(batch['image'], batch['label'], 10, 'bench')
  model, variables, _ = _shared_weights(arch)
  evaluator = evaluate.Evaluator(model, ('pgd20_sat',), mode='pmap',
                                 batch_size=FLAGS.batch_size)
  run = lambda: evaluator.per_example(variables['params'],
                                      variables['batch_stats'], ds)
  first, seconds = _timed(run, FLAGS.repeats)
  return {'seconds': seconds, 'compile_seconds': first - seconds}


def torch_pgd20_row(arch: str) -> dict:
  from torch_ref import steps as torch_steps  # pylint: disable=g-import-not-at-top
  torch, torch_models, device = _torch_setup(arch, 10)
  _, _, state_dict = _shared_weights(arch)
  model = torch_models.MODELS[arch](10)
  model.load_state_dict(state_dict)
  model.to(device)
  batch, _ = _cifar_test(FLAGS.batch_size)
  data = _to_torch(torch, batch, device)
  attack = {'budget': 'absolute', 'norm': 'linf', 'eps': 8 / 255,
            'step_size': 2 / 255, 'steps': 20, 'init': 'U'}

  def run():
    torch_steps.pgd_eval(model, data['x'], data['y'], attack)
    _sync(torch, device)

  first, seconds = _timed(run, FLAGS.repeats)
  return {'seconds': seconds, 'first_call_seconds': first,
          'threads': torch.get_num_threads(),
          'peak_memory_mib': _torch_peak_mib(torch, device)}


def jard_autoattack_row(arch: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jard import data as data_lib  # pylint: disable=g-import-not-at-top
  from jard import evaluate_autoattack  # pylint: disable=g-import-not-at-top
  batch, source = _cifar_test(FLAGS.aa_examples)
  ds = data_lib.ImageDataset(batch['image'], batch['label'], 10, 'bench')
  model, variables, _ = _shared_weights(arch)
  runner = evaluate_autoattack.AutoAttack(
      model, batch_size=min(FLAGS.batch_size, FLAGS.aa_examples))
  compile_seconds = runner.precompile(variables, ds.images.shape[1:])
  start = time.perf_counter()
  result = runner.run(variables, ds)
  seconds = time.perf_counter() - start
  return {'seconds': seconds, 'compile_seconds': compile_seconds,
          'clean_accuracy': float(np.mean(result.clean)),
          'robust_accuracy': float(np.mean(result.robust)),
          'per_attack_seconds': result.seconds, 'images': source}


def torch_autoattack_row(arch: str) -> dict:
  import torchattacks  # pylint: disable=g-import-not-at-top
  torch, torch_models, device = _torch_setup(arch, 10)
  _, _, state_dict = _shared_weights(arch)
  net = torch_models.MODELS[arch](10)
  net.load_state_dict(state_dict)

  class Logits(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.net = net

    def forward(self, x):
      return self.net(x)[0]

  model = Logits().to(device).eval()
  batch, source = _cifar_test(FLAGS.aa_examples)
  data = _to_torch(torch, batch, device)
  # torchattacks' `AutoAttack(version='standard')` runs APGD, APGD-T and
  # FAB-T with its 10-step defaults; the reference (and jard) use 100
  # iterations, so the cascade is built here with the reference settings.
  common = {'norm': 'Linf', 'eps': 8 / 255, 'seed': 0, 'n_restarts': 1}
  attack = torchattacks.MultiAttack([
      torchattacks.APGD(model, steps=100, loss='ce', **common),
      torchattacks.APGDT(model, steps=100, n_classes=10, **common),
      torchattacks.FAB(model, steps=100, multi_targeted=True, n_classes=10,
                       **common),
      torchattacks.Square(model, n_queries=5000, **common)])
  size = min(FLAGS.batch_size, FLAGS.aa_examples)
  start = time.perf_counter()
  robust = []
  for i in range(0, len(data['y']), size):
    x, y = data['x'][i:i + size], data['y'][i:i + size]
    x_adv = attack(x, y)
    with torch.no_grad():
      robust.append((model(x_adv).argmax(1) == y).float())
  _sync(torch, device)
  seconds = time.perf_counter() - start
  with torch.no_grad():
    clean = (model(data['x']).argmax(1) == data['y']).float().mean()
  return {'seconds': seconds, 'clean_accuracy': float(clean),
          'robust_accuracy': float(torch.cat(robust).mean()),
          'threads': torch.get_num_threads(), 'images': source,
          'peak_memory_mib': _torch_peak_mib(torch, device)}


ROWS = {
    ('jard', 'train'): jard_train_row,
    ('torch', 'train'): torch_train_row,
    ('jard', 'pgd20'): lambda method, arch: jard_pgd20_row(arch),
    ('torch', 'pgd20'): lambda method, arch: torch_pgd20_row(arch),
    ('jard', 'autoattack'): lambda method, arch: jard_autoattack_row(arch),
    ('torch', 'autoattack'): lambda method, arch: torch_autoattack_row(arch),
}


def run_row(spec: str) -> dict:
  framework, kind, method, arch = spec.split(':')
  result = ROWS[framework, kind](method, arch)
  if 'peak_memory_mib' not in result:
    result['peak_memory_mib'] = _jard_peak_mib()
  images = (FLAGS.aa_examples if kind == 'autoattack' else FLAGS.batch_size)
  result['images_per_sec'] = images / result['seconds']
  return result


# ---------------------------------------------------------------------------
# The table (parent process).


def _rows():
  if FLAGS.table == 'methods':
    from jard import methods  # pylint: disable=g-import-not-at-top
    out = []
    for arch in FLAGS.archs:
      # ATARD distils transformer attention maps: radio students only.
      names = FLAGS.methods or (RADIO_METHODS if arch in RADIO_ARCHS else
                                sorted(set(methods.METHODS) - {'atard'}))
      out += [('jard', 'train', m, arch) for m in names]
    return out
  out = []
  for arch in FLAGS.archs:
    for method in (FLAGS.methods or RATIO_METHODS
                   if 'train' in FLAGS.kinds else ()):
      out += [('jard', 'train', method, arch), ('torch', 'train', method, arch)]
    if arch not in RADIO_ARCHS:
      for kind in [k for k in ('pgd20', 'autoattack') if k in FLAGS.kinds]:
        out += [('jard', kind, '-', arch), ('torch', kind, '-', arch)]
  return out


def _run_subprocess(spec, core=None):
  """Runs one row in a fresh process; `core`: pinned there, one thread."""
  args = [sys.executable, os.path.abspath(__file__), f'--row={spec}']
  for name in ('teacher', 'batch_size', 'repeats', 'aa_examples',
               'aa_checkpoint', 'data_dir'):
    args.append(f'--{name}={getattr(FLAGS, name)}')
  env = dict(os.environ)
  if core is not None:
    args = ['taskset', '-c', str(core)] + args
    env['OMP_NUM_THREADS'] = '1'  # PyTorch's intra-op pool
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_'
                        'eigen=false intra_op_parallelism_threads=1').strip()
  proc = subprocess.run(args, capture_output=True, text=True, check=False,
                        env=env)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith('{'):
      return json.loads(line)
  # The exception's own line, not JAX's closing note on filtered frames.
  lines = [l for l in proc.stderr.strip().splitlines()
           if re.match(r'\w+(\.\w+)*(Error|Exception): ', l)]
  return {'error': lines[-1:] or proc.stderr.strip().splitlines()[-1:]
                   or ['no output']}


def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = f'torch {torch.__version__} ({torch.get_num_threads()} ' \
                    'threads)'
  except ImportError:
    torch_version = 'no torch'
  return (f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
          f'CPU cores (affinity {len(os.sched_getaffinity(0))}), jax '
          f'{jax.__version__} on {jax.devices()[0].device_kind} '
          f'×{jax.device_count()}, {torch_version}, XLA_FLAGS='
          f'"{os.environ.get("XLA_FLAGS", "")}"')


def _fmt(x, spec='.2f'):
  return '-' if x is None else format(x, spec)


def write_table(results: dict, path_stem: str) -> str:
  lines = [f'# jard throughput ({FLAGS.table})', '',
           f'Machine: {machine()}.', '',
           f'Batch {FLAGS.batch_size}; the median of {FLAGS.repeats} calls '
           'after a warm-up call; teachers: '
           f'{FLAGS.teacher} (CNN students), amc_teacher (AMC). Peak memory: '
           'the process peak RSS on CPU, device peak bytes on GPU.' + (
               ' Each jard row ran at the same time as its PyTorch row, '
               'jard pinned to core 0 and PyTorch to core 1, one thread each '
               '(`--pin_pairs`).' if FLAGS.pin_pairs else ''), '',
           '| work | method | arch | jard img/s | PyTorch img/s | jard / '
           'PyTorch | jard compile s | jard peak MiB | PyTorch peak MiB | '
           'recompiles |', '|---|---|---|---|---|---|---|---|---|---|']
  keys = sorted({k[1:] for k in results}, key=list(
      dict.fromkeys(k[1:] for k in results)).index)
  for kind, method, arch in keys:
    j = results.get(('jard', kind, method, arch), {})
    t = results.get(('torch', kind, method, arch), {})
    ratio = (j['images_per_sec'] / t['images_per_sec']
             if 'images_per_sec' in j and 'images_per_sec' in t else None)
    lines.append(
        f'| {kind} | {method} | {arch} | {_fmt(j.get("images_per_sec"))} | '
        f'{_fmt(t.get("images_per_sec"))} | {_fmt(ratio)} | '
        f'{_fmt(j.get("compile_seconds"), ".1f")} | '
        f'{_fmt(j.get("peak_memory_mib"), ".0f")} | '
        f'{_fmt(t.get("peak_memory_mib"), ".0f")} | '
        f'{j.get("recompiles", "-")} |')
  errors = {k: v['error'] for k, v in results.items() if 'error' in v}
  if errors:
    lines += ['', 'Rows that failed:', '']
    lines += [f'* `{":".join(k)}`: {v}' for k, v in errors.items()]
  text = '\n'.join(lines) + '\n'
  os.makedirs(os.path.join(HERE, 'results'), exist_ok=True)
  with open(path_stem + '.md', 'w') as f:
    f.write(text)
  with open(path_stem + '.json', 'w') as f:
    json.dump({':'.join(k): v for k, v in results.items()}, f, indent=2)
  return text


def main(argv):
  del argv
  if FLAGS.row:
    print(json.dumps(run_row(FLAGS.row)), flush=True)
    return
  stem = os.path.join(HERE, 'results', FLAGS.out)
  results = {}
  rows = _rows()
  if FLAGS.pin_pairs:  # jard's rows on core 0, their PyTorch pair on core 1
    groups = {}
    for key in rows:
      groups.setdefault(key[1:], []).append(key)
    rows = list(groups.values())
  else:
    rows = [[key] for key in rows]
  for group in rows:
    print('rows', [':'.join(k) for k in group], flush=True)
    with futures.ThreadPoolExecutor(len(group)) as pool:
      done = pool.map(
          lambda kc: _run_subprocess(':'.join(kc[0]), kc[1]),
          [(k, c if FLAGS.pin_pairs else None) for c, k in enumerate(group)])
      for key, result in zip(group, done):
        results[key] = result
        print('   ', ':'.join(key), result, flush=True)
    write_table(results, stem)  # partial tables survive a stop
  print(write_table(results, stem))


if __name__ == '__main__':
  app.run(main)
