"""The tiny image configs the pipeline tests run (`configs/<m>.py:quick`)."""

import importlib
import os
import re


def quick_image_config(module: str, variant: str, npz_path: str,
                       **overrides):
  """`configs/<module>.py:<variant>` on the tiny npz, evaluated cheaply.

  The evaluation keeps clean and PGD-20 on 32 images of the last
  checkpoint (no AutoAttack, no ε curve, no selection pass: fewer
  compiles). `overrides` are dotted paths, e.g. `**{'method.alpha': 0.5}`.
  """
  config = importlib.import_module(f'configs.{module}').get_config(variant)
  config.dataset.train = config.dataset.test = 'npz:' + npz_path
  config.eval.autoattack.version = ''
  config.eval.curve_epsilons = ''
  config.eval.attacks = 'clean,pgd20_sat'
  config.eval.num_examples = 32
  config.eval.checkpoints = 'last'
  config.select.metric = ''
  return apply_overrides(config, **overrides)


def apply_overrides(config, **overrides):
  """Sets dotted-path fields, e.g. `**{'eval.attacks': 'clean'}`."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def linked_pngs(report_path: str, *required: str) -> list:
  """The PNGs `report.md` links; each must exist next to it, non-empty.

  `required`: file names the report must link.
  """
  with open(report_path, encoding='utf-8') as f:
    links = re.findall(r'\]\(([^)]+\.png)\)', f.read())
  directory = os.path.dirname(report_path)
  for name in links:
    path = os.path.join(directory, name)
    assert os.path.isfile(path) and os.path.getsize(path) > 1000, path
  missing = set(required) - set(links)
  assert not missing, f'{report_path} does not link {missing}'
  return links


def assert_steps_compiled_once(workdir: str, min_runs: int = 1) -> list:
  """Every train stage under `workdir` compiled its step exactly once.

  Each `train/train_stats.json` of the run (its teachers, student and
  baselines) must record `step_compiles_after_first == 0` after at least one
  timed step beyond the first (which compiles). The runs went through the
  train loop's transfer guard too (`train.STEP_TRANSFER_GUARD`), so no step
  after the first made an implicit transfer. Returns the stats files.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(workdir, '**', 'train_stats.json'),
                           recursive=True))
  assert len(paths) >= min_runs, paths
  for path in paths:
    with open(path) as f:
      stats = json.load(f)
    assert stats['train_images'] > 0, f'{path}: no step after the first'
    assert stats['step_compiles_after_first'] == 0, path
  return paths
