r"""The offline quickstart: the whole ATARD pipeline on CPU in ≈10 minutes.

Generates a synthetic RadioML-2016.10A look-alike (no download), adversarially
trains a transformer teacher, trains a compact student with plain PGD-AT and
with ATARD, evaluates all three under FGM and PGD at perturbation-to-noise
budgets, and writes `report.md` with the comparison table and plots:

    python main.py --config=configs/quickstart.py     # -> runs/quickstart/

It is `configs/atard.py` scaled to two CPU cores: 400 examples per
(modulation, SNR) key (44k train / 44k test), training on the SNR ≥ 0 dB
half of the training set, smaller transformers (teacher 6 layers of width 64,
204k parameters; students 2 layers of width 48, 40k; the same 17 tokens),
PGD-3 at PNR −10 dB in training, 10 teacher epochs and 3 student epochs, and
the evaluation on a 3000-example test subset. The timing and results of
a run are in `benchmarks/results/quickstart.md`.
"""

from configs import atard
from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = atard.get_config()
  config.dataset.source = 'amc_synthetic:per_key=400'
  config.dataset.min_train_snr = 0
  config.model = atard.transformer(48, 2, 4, 96)
  config.teachers.robust.model = atard.transformer(64, 6, 4, 128)
  config.batch_size = 128
  # The teacher gets most of the budget: ATARD assumes a teacher more robust
  # than the student, and distillation is what must make a briefly trained
  # student robust (benchmarks/results/quickstart.md lists what we tried).
  config.teachers.robust.recipe.num_epochs = 10
  config.num_epochs = 3
  config.attack.train.steps = 3
  config.attack.train.relative_step = 0.5
  config.optimizer.lr = 2e-3
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.select.metric = ''
  config.eval.num_examples = 3000
  config.eval.radio.pnrs = '-20,-15,-10,-5,0'
  config.eval.radio.snrs = '0,10'
  if 'quick' in args:
    atard.quick(config)
  return config
