"""The pipeline: train → eval stages, each resumable and skipped when done.

Layout of a workdir:

    config.json          the resolved config
    train/               checkpoints/, best/, metrics.jsonl, TensorBoard events,
                         COMPLETE (written when the stage finished)
    eval/                results.json, results.md

A stage is skipped when its completion record matches the config it would
run with; a killed stage resumes from its last checkpoint.
"""

import json
import os

from absl import logging
import jax
import numpy as np

from jard import checkpoint
from jard import data as data_lib
from jard import evaluate
from jard import methods
from jard import models
from jard import parallel
from jard import train as train_lib
from jard import validation


def _complete_path(stage_dir):
  return os.path.join(stage_dir, 'COMPLETE')


def _is_complete(stage_dir: str, record: dict) -> bool:
  path = _complete_path(stage_dir)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      return json.load(f) == record
  except (OSError, ValueError):
    return False


def _mark_complete(stage_dir: str, record: dict) -> None:
  if jax.process_index() == 0:
    with open(_complete_path(stage_dir), 'w') as f:
      json.dump(record, f)


def load_datasets(config):
  """Train, test and (optionally) held-out selection datasets."""
  ds = config.dataset
  kw = dict(num_classes=ds.num_classes, image_size=ds.image_size)
  train_ds = data_lib.load(ds.train, role='train', field='config.dataset.train',
                           **kw)
  test_ds = data_lib.load(ds.test, role='test', field='config.dataset.test',
                          **kw)
  if ds.train_examples > 0:
    train_ds = train_ds.subset(slice(0, ds.train_examples), '[:n]')
  select_ds = test_ds
  if ds.holdout > 0:
    if ds.holdout >= len(train_ds):
      raise data_lib.DataError(
          f'config.dataset.holdout={ds.holdout} leaves no training data.')
    # A stream of its own (tag 2**31 - 1), never an epoch's shuffle.
    perm = np.random.default_rng([config.seed, 2**31 - 1]).permutation(
        len(train_ds))
    select_ds = train_ds.subset(perm[:ds.holdout], '[holdout]')
    train_ds = train_ds.subset(perm[ds.holdout:], '[train]')
  if len(train_ds) < config.batch_size:
    raise data_lib.DataError(
        f'config.batch_size={config.batch_size} exceeds the {len(train_ds)} '
        'training examples; lower the batch size or use more data.')
  return train_ds, test_ds, select_ds


def build_model(config, num_classes):
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
  return models.create_model(config.model.name, num_classes,
                             bn_axis_name=parallel.AXIS, **kwargs)


def run(config, workdir: str, *, stop_at_step=None) -> dict:
  """Runs the configured stages; returns the eval results (if evaluated)."""
  validation.validate(config)
  stages = validation.stages(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  logging.info('JAX process %d/%d, %d local / %d global devices: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices())
  train_ds, test_ds, select_ds = load_datasets(config)
  model = build_model(config, train_ds.num_classes)
  method = methods.get_method(config.method.name)
  train_dir = os.path.join(workdir, 'train')
  train_record = {'config': config.to_json_best_effort(sort_keys=True)}
  results = {}

  if 'train' in stages:
    if _is_complete(train_dir, train_record):
      logging.info('Stage train already complete; skipping.')
    else:
      _, stats = train_lib.train(
          config, train_dir, model=model, method=method, train_ds=train_ds,
          select_ds=select_ds, stop_at_step=stop_at_step)
      if stop_at_step is not None:
        return results
      if jax.process_index() == 0:
        with open(os.path.join(train_dir, 'train_stats.json'), 'w') as f:
          json.dump(stats, f, indent=2)
      _mark_complete(train_dir, train_record)

  if 'eval' in stages:
    eval_dir = os.path.join(workdir, 'eval')
    if _is_complete(eval_dir, train_record):
      logging.info('Stage eval already complete; skipping.')
      with open(os.path.join(eval_dir, 'results.json')) as f:
        return json.load(f)
    results = evaluate_checkpoints(config, train_dir, model, test_ds)
    evaluate.write_report(results, eval_dir,
                          title=f'{config.method.name} / {config.model.name}')
    _mark_complete(eval_dir, train_record)
  return results


def evaluate_checkpoints(config, train_dir, model, test_ds) -> dict:
  """Runs the eval suite on the last and (when kept) best checkpoints."""
  abstract = jax.eval_shape(
      lambda: train_lib.init_variables(model, jax.random.key(0),
                                       test_ds.images.shape[1:]))
  target = {'params': abstract['params'],
            'batch_stats': abstract.get('batch_stats', {})}
  ckpt = checkpoint.Checkpoints(train_dir, keep=config.keep_checkpoints,
                                metric=config.select.metric or None)
  evaluator = evaluate.Evaluator(
      model, config.eval.attacks, mode=config.parallel,
      batch_size=config.eval.batch_size, epsilon=config.eval.epsilon,
      seed=config.eval.seed)
  results = {}
  try:
    wanted = [c.strip() for c in config.eval.checkpoints.split(',')]
    found = {}
    if 'last' in wanted:
      step = ckpt.latest_step()
      if step is None:
        raise FileNotFoundError(
            f'no training checkpoint under {train_dir}; run the train stage '
            'first (add it to config.stages).')
      found['last'] = (step, ckpt.latest.restore(step, args=_partial(target)))
    if 'best' in wanted and ckpt.best is not None:
      ckpt.best.wait_until_finished()
      step = ckpt.best.best_step()
      if step is not None and step != found.get('last', (None,))[0]:
        found['best'] = (step, ckpt.best.restore(step, args=_partial(target)))
    for name, (step, variables) in found.items():
      logging.info('Evaluating the %s checkpoint (step %d).', name, step)
      accuracy = evaluator.run(variables['params'], variables['batch_stats'],
                               test_ds, config.eval.num_examples)
      results[name] = {'step': int(step), 'accuracy': accuracy}
      logging.info('%s: %s', name, accuracy)
  finally:
    ckpt.close()
  return results


def _partial(target):
  """Restore args that read only `params` and `batch_stats` of a state."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return ocp.args.PyTreeRestore(
      item=abstract,
      restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(), abstract),
      partial_restore=True)
