"""The eval suite: every example once, independent of batching and mapping."""

import jax
import jax.numpy as jnp
import numpy as np

from jard import data
from jard import evaluate
from jard.models import resnet


def _setup():
  model = resnet.ResNet(stage_sizes=(1, 1), widths=(8, 16), num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  rng = np.random.default_rng(0)
  ds = data.ImageDataset(rng.integers(0, 256, (40, 16, 16, 3), np.uint8),
                         rng.integers(0, 10, (40,)).astype(np.int32), 10, 't')
  return model, variables, ds


def test_results_do_not_depend_on_batch_size_padding_or_mode():
  model, variables, ds = _setup()
  suite = ('clean', 'fgsm', 'pgd20_sat', 'cw_inf')
  runs = []
  for mode, batch_size in [('pmap', 16), ('pmap', 40), ('shard_map', 24)]:
    evaluator = evaluate.Evaluator(model, suite, mode=mode,
                                   batch_size=batch_size)
    runs.append(evaluator.per_example(variables['params'],
                                      variables['batch_stats'], ds))
  for other in runs[1:]:
    for name in suite:
      np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)
  assert all(len(v) == 40 for v in runs[0].values())  # padding masked out
  # Clean accuracy is exactly the model's accuracy on the raw images.
  logits = model.apply(variables, data.to_float(ds.images)).logits
  np.testing.assert_array_equal(runs[0]['clean'],
                                np.argmax(logits, -1) == ds.labels)
  # An attack can only remove correct examples.
  for name in suite[1:]:
    assert not np.any(runs[0][name] & ~runs[0]['clean'])


def test_summary_and_num_examples():
  model, variables, ds = _setup()
  evaluator = evaluate.Evaluator(model, 'clean,pgd20_trades', mode='pmap',
                                 batch_size=16)
  summary = evaluator.run(variables['params'], variables['batch_stats'], ds,
                          num_examples=20)
  assert summary['num_examples'] == 20
  assert summary['worst_case'] <= min(summary['clean'],
                                      summary['pgd20_trades'])
