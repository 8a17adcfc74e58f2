"""The pipeline: teachers → train → eval stages, each resumable.

Layout of a workdir:

    config.json          the resolved config
    data/                generated data (the synthetic radio source's cache)
    teachers/<name>/     a teacher's own run (config.json, train/, eval/), when
                         the teachers stage trains it (`jard.teachers`)
    train/               checkpoints/, best/, metrics.jsonl, TensorBoard events,
                         COMPLETE (written when the stage finished)
    baselines/<name>/    further students (config.baselines), each a run
    eval/                results.json, report.md (+ robust_accuracy_vs_eps.png)
                         (images), or report.md +
                         plots (radio)
    report.md, results.json, *.png
                         the comparison of teachers, baselines and the
                         student, when there are any

A stage is skipped when its completion record matches the config it would
run with; a killed stage resumes from its last checkpoint.
"""

import copy
import json
import os
import shutil

from absl import logging
import jax
import ml_collections
import numpy as np

from jard import checkpoint
from jard import data as data_lib
from jard import evaluate
from jard import methods
from jard import evaluate_radio
from jard import models
from jard import parallel
from jard import reports
from jard import teachers as teacher_lib
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


def load_datasets(config, data_dir: str = '.'):
  """Train, test and (optionally) held-out selection datasets."""
  ds = config.dataset
  kw = dict(num_classes=ds.num_classes, image_size=ds.image_size,
            cache_dir=data_dir)
  train_spec, train_field = ds.train, 'config.dataset.train'
  test_spec, test_field = ds.test, 'config.dataset.test'
  if ds.source:
    train_spec = test_spec = ds.source
    train_field = test_field = 'config.dataset.source'
  train_ds = data_lib.load(train_spec, role='train', field=train_field, **kw)
  test_ds = data_lib.load(test_spec, role='test', field=test_field, **kw)
  if 'snr' in train_ds.extras and ds.min_train_snr > -100:
    keep = np.flatnonzero(train_ds.extras['snr'] >= ds.min_train_snr)
    if not len(keep):
      raise data_lib.DataError(
          f'config.dataset.min_train_snr={ds.min_train_snr} leaves no '
          'training examples; lower it.')
    train_ds = train_ds.subset(keep, f'[snr>={ds.min_train_snr}]')
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


def _run_config_of(train_dir: str) -> ml_collections.ConfigDict:
  """The `config.json` a jard run wrote next to its `train/` directory."""
  for path in (os.path.join(os.path.dirname(os.path.abspath(train_dir)),
                            'config.json'),
               os.path.join(train_dir, 'config.json')):
    if os.path.isfile(path):
      try:
        with open(path) as f:
          return ml_collections.ConfigDict(json.load(f))
      except (ValueError, TypeError) as e:
        raise data_lib.DataError(
            f'config.checkpoint: {path} is not a readable jard config '
            f'({e}); set --config.model.name and --config.dataset.test.'
        ) from None
  return None


def evaluation_config(config):
  """`configs/evaluate.py`: the model and test set from the checkpoint's
  run where the evaluation config leaves them empty."""
  config = copy.deepcopy(config)
  train_dir = teacher_lib.resolve_train_dir(config.checkpoint)
  if not os.path.isdir(os.path.join(train_dir, 'checkpoints')):
    raise FileNotFoundError(
        f'config.checkpoint={config.checkpoint!r}: no jard checkpoints there;'
        ' give a jard run workdir or its train/ directory.')
  run_cfg = _run_config_of(train_dir)
  missing = [f for f in ('model.name', 'dataset.test')
             if not config[f.split('.')[0]][f.split('.')[1]]]
  if missing and run_cfg is None:
    raise FileNotFoundError(
        f'config.checkpoint={config.checkpoint!r}: no config.json beside the '
        f'checkpoints, so set {", ".join("--config." + m for m in missing)}.')
  with config.unlocked():
    if not config.model.name:
      config.model = ml_collections.ConfigDict(run_cfg.model.to_dict())
    if not config.dataset.test:
      for field in ('source', 'test', 'num_classes', 'image_size'):
        config.dataset[field] = run_cfg.dataset[field]
    config.dataset.train = config.dataset.train or config.dataset.test
  config.stages = 'eval'
  return config, train_dir


def run_evaluation(config, workdir: str) -> dict:
  """Evaluates `config.checkpoint` (no training); the report in `workdir`."""
  config, train_dir = evaluation_config(config)
  validation.validate(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  ds = config.dataset
  spec, field = ((ds.source, 'config.dataset.source') if ds.source
                 else (ds.test, 'config.dataset.test'))
  test_ds = data_lib.load(spec, role='test', field=field,
                          num_classes=ds.num_classes,
                          image_size=ds.image_size,
                          cache_dir=os.path.join(workdir, 'data'))
  model = build_model(config, test_ds.num_classes)
  results = evaluate_checkpoints(config, train_dir, model, test_ds)
  _write_eval_report(config, results, workdir,
                     os.path.basename(os.path.abspath(config.checkpoint)))
  return results


def run(config, workdir: str, *, stop_at_step=None, datasets=None,
        display_name: str = 'student') -> dict:
  """Runs the configured stages; returns the eval results (if evaluated).

  Args:
    config: the resolved config (validated here).
    workdir: the run's directory.
    stop_at_step: stop the student's training after this step (tests).
    datasets: `(train, test, select)` already loaded by a parent run.
    display_name: the run's name in comparison reports.
  """
  if config.get('checkpoint'):
    return run_evaluation(config, workdir)
  validation.validate(config)
  stages = validation.stages(config)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  logging.info('JAX process %d/%d, %d local / %d global devices: %s',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices())
  if datasets is None:
    datasets = load_datasets(config, os.path.join(workdir, 'data'))
  train_ds, test_ds, select_ds = datasets
  model = build_model(config, train_ds.num_classes)
  method = methods.get_method(config.method.name)
  train_dir = os.path.join(workdir, 'train')
  train_record = {'config': config.to_json_best_effort(sort_keys=True)}
  compared = {}  # display name -> (eval results, parameter count)

  for name in config.teachers:
    if config.teachers[name].checkpoint:
      continue
    teacher_cfg = teacher_lib.teacher_config(config, name)
    teacher_cfg.stages = ','.join(
        (['train'] if 'teachers' in stages else [])
        + (['eval'] if config.teachers[name].evaluate and 'eval' in stages
           else []))
    if teacher_cfg.stages:
      label = (f'teacher {name} ({teacher_cfg.method.name}/'
               f'{teacher_cfg.model.name})')
      logging.info('Stage teachers: %s.', label)
      compared[label] = run(teacher_cfg,
                            teacher_lib.teacher_workdir(workdir, name),
                            datasets=datasets, display_name=label)
  teachers = {}
  if method.teachers and ('train' in stages or 'eval' in stages):
    teachers = teacher_lib.build_teachers(
        config, workdir, train_ds.images.shape[1:], train_ds.num_classes)

  if 'train' in stages:
    if _is_complete(train_dir, train_record):
      logging.info('Stage train already complete; skipping.')
    else:
      _, stats = train_lib.train(
          config, train_dir, model=model, method=method, train_ds=train_ds,
          select_ds=select_ds, teachers=teachers, stop_at_step=stop_at_step)
      if stop_at_step is not None:
        return {}
      stats_path = os.path.join(train_dir, 'train_stats.json')
      # A run found finished (its config record changed) takes no step:
      # keep the throughput of the run that trained.
      if jax.process_index() == 0 and (stats['train_images']
                                       or not os.path.exists(stats_path)):
        with open(stats_path, 'w') as f:
          json.dump(stats, f, indent=2)
      _mark_complete(train_dir, train_record)

  for name in config.baselines:
    baseline_cfg = teacher_lib.derive_config(
        config, config.baselines[name], field=f'config.baselines.{name}')
    baseline_cfg.stages = ','.join(s for s in stages if s != 'teachers')
    for teacher in baseline_cfg.teachers:  # Shared: this run's teachers.
      baseline_cfg.teachers[teacher].checkpoint = (
          teacher_lib.teacher_train_dir(config, teacher, workdir))
      baseline_cfg.teachers[teacher].evaluate = False
    label = (f'{name} ({baseline_cfg.method.name}/'
             f'{baseline_cfg.model.name})')
    logging.info('Baseline %s.', label)
    compared[label] = run(baseline_cfg,
                          os.path.join(workdir, 'baselines', name),
                          datasets=datasets, display_name=label)

  results = {}
  if 'eval' in stages:
    eval_dir = os.path.join(workdir, 'eval')
    if _is_complete(eval_dir, train_record):
      logging.info('Stage eval already complete; skipping.')
      with open(os.path.join(eval_dir, 'results.json')) as f:
        results = json.load(f)
    else:
      results = evaluate_checkpoints(config, train_dir, model, test_ds)
      _write_eval_report(config, results, eval_dir, display_name)
      _mark_complete(eval_dir, train_record)
  if compared and results:
    compared[f'{display_name} ({config.method.name}/{config.model.name})'] = (
        results)
    write_comparison(config, compared, workdir)
  return results


def _chosen(results: dict) -> dict:
  """The checkpoint a comparison reports: best when kept, else last."""
  return results.get('best') or results.get('last') or {}


def _cam_grid(workdir, eval_dir, config, which):
  """SmaraAD's picture: teacher and student CAMs, clean and adversarial."""
  from jard import cam_report  # pylint: disable=g-import-not-at-top
  mse = cam_report.report(workdir, num_examples=config.eval.num_examples,
                          which=which, out=eval_dir)
  return {f'CAM grid ({which} checkpoint; CAM MSE teacher↔student: clean '
          f'{mse["clean"]:.4f}, adversarial {mse["adversarial"]:.4f})':
              cam_report.GRID}


def _attention_grid(workdir, eval_dir, config, which):
  """ADER's picture: student and both teachers' attention maps."""
  del config
  from jard import attention_report  # pylint: disable=g-import-not-at-top
  path = attention_report.report(workdir, which=which, out=eval_dir)
  return {f'Attention maps ({which} checkpoint)': os.path.basename(path)}


# Method -> the picture drawn into eval/ and linked from report.md.
METHOD_FIGURES = {'smaraad': _cam_grid, 'smaraad_pp': _cam_grid,
                  'ader': _attention_grid}


def _figures(config, results, eval_dir) -> dict:
  """Draws the run's figures into `eval_dir`: `{heading: PNG name}`."""
  if not config.eval.figures or jax.process_index() > 0:
    return {}
  workdir = os.path.dirname(eval_dir)
  figures = {}
  os.makedirs(eval_dir, exist_ok=True)
  if reports.plot_training_curves(os.path.join(workdir, 'train'),
                                  os.path.join(eval_dir, reports.CURVES)):
    figures['Training curves'] = reports.CURVES
  draw = METHOD_FIGURES.get(config.method.name)
  if draw is not None and results:
    figures.update(draw(workdir, eval_dir, config,
                        'best' if 'best' in results else 'last'))
  return figures


def _write_eval_report(config, results, eval_dir, display_name):
  title = f'{display_name}: {config.method.name} / {config.model.name}'
  figures = _figures(config, results, eval_dir)
  if data_lib.is_radio_config(config.dataset):
    for which, summary in results.items():
      name = f'{display_name} ({which}, step {summary["step"]})'
      directory = os.path.join(eval_dir, which)
      os.makedirs(directory, exist_ok=True)
      for png in figures.values():  # The report links files next to it.
        shutil.copyfile(os.path.join(eval_dir, png),
                        os.path.join(directory, png))
      evaluate_radio.write_report(
          {name: summary['radio']}, directory, title=title,
          params_by_model={name: summary['num_params']}, figures=figures)
    if jax.process_index() == 0:
      with open(os.path.join(eval_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2, sort_keys=True)
  else:
    evaluate.write_report(results, eval_dir, title=title, figures=figures)


def write_comparison(config, compared: dict, workdir: str) -> None:
  """The teachers/baselines/student comparison report in the workdir."""
  if jax.process_index() > 0:
    return
  chosen = {name: _chosen(res) for name, res in compared.items()}
  chosen = {name: res for name, res in chosen.items() if res}
  if not chosen:
    return
  params = {name: res.get('num_params') for name, res in chosen.items()}
  title = f'Comparison: {config.method.name} and its references'
  if data_lib.is_radio_config(config.dataset):
    evaluate_radio.write_report(
        {name: res['radio'] for name, res in chosen.items()}, workdir,
        title=title, params_by_model=params)
    return
  evaluate.write_report(chosen, workdir, title=title)


TEACHER_PREFIX = 'teacher:'


def transfer_source(config, workdir: str):
  """`(spec with model and which, train dir)` of the transfer surrogate.

  `config.eval.transfer.checkpoint='teacher:<name>'` names this run's
  teacher as loaded *before* training (its checkpoint, or the teachers
  stage's run): CIARD's protocol transfers from the original teacher, not
  the retrained copy. `transfer.model.name` may then stay empty.
  """
  transfer = config.eval.transfer
  if not transfer.checkpoint.startswith(TEACHER_PREFIX):
    return transfer, teacher_lib.resolve_train_dir(transfer.checkpoint)
  name = transfer.checkpoint[len(TEACHER_PREFIX):]
  spec = config.teachers[name]
  if transfer.model.name:
    spec = ml_collections.ConfigDict(spec.to_dict())
    spec.model = ml_collections.ConfigDict(transfer.model.to_dict())
  return spec, teacher_lib.teacher_train_dir(config, name, workdir)


def evaluate_checkpoints(config, train_dir, model, test_ds) -> dict:
  """Runs the eval suite on the last and (when kept) best checkpoints."""
  restore_args = checkpoint.variables_restore_args(
      model, test_ds.images.shape[1:])
  ckpt = checkpoint.Checkpoints(train_dir, keep=config.keep_checkpoints,
                                metric=config.select.metric or None)
  radio = data_lib.is_radio_config(config.dataset)
  evaluator = evaluate.make_evaluator(config, model)
  surrogate = None
  if not radio and config.eval.transfer.checkpoint:
    spec, path = transfer_source(config, os.path.dirname(train_dir))
    surrogate_model = teacher_lib.build_model(spec, test_ds.num_classes)
    surrogate = (surrogate_model, teacher_lib.load_variables(
        path, surrogate_model, test_ds.images.shape[1:], which=spec.which,
        field='config.eval.transfer.checkpoint', arch=spec.model.name))
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
      found['last'] = (step, ckpt.latest.restore(step, args=restore_args))
    if 'best' in wanted and ckpt.best is not None:
      ckpt.best.wait_until_finished()
      step = ckpt.best.best_step()
      if step is not None and step != found.get('last', (None,))[0]:
        found['best'] = (step, ckpt.best.restore(step, args=restore_args))
    for name, (step, variables) in found.items():
      logging.info('Evaluating the %s checkpoint (step %d).', name, step)
      summary = {'step': int(step),
                 'num_params': teacher_lib.parameter_count(variables)}
      if radio:
        radio_cfg = config.eval.radio
        summary['radio'] = evaluator.protocol(
            variables['params'], variables['batch_stats'], test_ds,
            pnrs=evaluate_radio.parse_numbers(radio_cfg.pnrs,
                                              'config.eval.radio.pnrs'),
            snrs=evaluate_radio.parse_numbers(radio_cfg.snrs,
                                              'config.eval.radio.snrs'),
            num_examples=config.eval.num_examples)
        summary['accuracy'] = summary['radio']['accuracy']
      else:
        summary.update(evaluate.image_protocol(
            config, model, evaluator, variables, test_ds, surrogate,
            autoattack_progress=os.path.join(
                os.path.dirname(train_dir), 'eval',
                f'autoattack_progress_{name}_{step}.npz')))
      results[name] = summary
      logging.info('%s: %s', name, summary['accuracy'])
  finally:
    ckpt.close()
  return results

