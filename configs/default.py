r"""Every config field, documented. Method configs start from this one.

Run a config with

    python main.py --config=configs/pgd_at.py --workdir=runs/pgd_at
    python main.py --config=configs/pgd_at.py:quick --config.batch_size=64

Any field can be overridden with `--config.<a>.<b>=<value>`; configs hold
only primitives, so the resolved config is saved as JSON in the workdir.
"""

import ml_collections


def get_config(arg=None):
  """The defaults: PGD-AT of a CIFAR-10 ResNet-18."""
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Comma-separated stages to run, in order (jard.validation.STAGES):
  # teachers (train config.teachers without a checkpoint), train, eval.
  config.stages = 'teachers,train,eval'
  # 'pmap' (default) or 'shard_map': how the per-device step is mapped.
  config.parallel = 'pmap'
  # The dtype of the training step's forward passes (student, teachers and
  # the training attack): 'float32' or 'bfloat16' (mixed precision for
  # GPU/TPU: float32 parameters, optimizer and BatchNorm statistics).
  # Evaluation and its attacks always run in float32, and so does CIARD's
  # retrained teacher.
  config.compute_dtype = 'float32'
  config.progress_bar = True

  config.dataset = ml_collections.ConfigDict()
  # Sources: tfds:cifar10, tfds:cifar100, npz:<path>, folder:<root>, and the
  # radio sources amc_synthetic[:per_key=N,seed=S,am_ssb=correct|faithful]
  # and radioml:<path to RML2016.10a_dict.pkl> (split 50/50 by role).
  config.dataset.train = 'tfds:cifar10'
  config.dataset.test = 'tfds:cifar10'
  # If set, one source for both roles (its train / test halves); overrides
  # train and test. E.g. --config.dataset.source=radioml:RML2016.10a_dict.pkl
  config.dataset.source = ''
  config.dataset.num_classes = 10
  config.dataset.image_size = 32
  # Pad-4 random crop + horizontal flip, on device.
  config.dataset.augment = True
  # Use only the first N training examples (-1: all).
  config.dataset.train_examples = -1
  # Hold out N training examples (seeded) for checkpoint selection; 0 selects
  # on the test set, as the baselines' released code does.
  config.dataset.holdout = 0
  # Radio only: train on examples with SNR >= this (dB); the test set keeps
  # every SNR. Noise-level examples teach little (torchsig's RadioML loader
  # trains from -2 dB by default). -100: all.
  config.dataset.min_train_snr = -100

  config.model = ml_collections.ConfigDict()
  # A key of jard.models.MODELS; other fields here are constructor kwargs.
  config.model.name = 'resnet18'

  config.method = ml_collections.ConfigDict()
  # A key of jard.methods.METHODS; other fields are its hyperparameters.
  config.method.name = 'pgd_at'

  config.attack = ml_collections.ConfigDict()
  # The training attack (inner maximisation) of the method.
  config.attack.train = ml_collections.ConfigDict()
  config.attack.train.eps = 8 / 255
  config.attack.train.step_size = 2 / 255
  config.attack.train.steps = 10
  # 'U' uniform in the ball, 'N' x + 0.001 N(0, I), 'none'.
  config.attack.train.init = 'U'
  config.attack.train.norm = 'linf'
  # 'absolute': eps/step_size in input units. 'pnr' (radio): example i gets
  # the L2 budget ‖x_i‖·10^((pnr − SNR_i)/20) and steps of relative_step·ε_i.
  config.attack.train.budget = 'absolute'
  config.attack.train.pnr = 0.0
  config.attack.train.relative_step = 0.25

  config.optimizer = ml_collections.ConfigDict()
  # 'sgd': momentum and coupled (PyTorch) weight decay; 'adamw': decoupled
  # decay, β = (0.9, 0.999) (momentum and nesterov unused).
  config.optimizer.name = 'sgd'
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4

  config.schedule = ml_collections.ConfigDict()
  # 'piecewise' (epoch boundaries x factor), 'cosine' or 'constant'.
  config.schedule.name = 'piecewise'
  config.schedule.boundaries = (100, 150)
  config.schedule.factor = 0.1

  # Global batch size (split over all devices and processes).
  config.batch_size = 128
  config.num_epochs = 200
  # If > 0, overrides num_epochs.
  config.num_train_steps = -1
  config.log_every_steps = 50
  # Checkpoints are also saved at every epoch end.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2

  config.select = ml_collections.ConfigDict()
  # Attack whose accuracy picks the best checkpoint ('' disables selection).
  config.select.metric = 'pgd20_sat'
  config.select.every_epochs = 1
  config.select.num_examples = 1000

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256
  config.eval.epsilon = 8 / 255
  # Comma-separated names of jard.evaluate.ATTACKS.
  config.eval.attacks = 'clean,fgsm,pgd20_sat,pgd20_trades,cw_inf'
  # -1: every test example.
  config.eval.num_examples = -1
  # Which checkpoints to evaluate: 'last', 'best' or both.
  config.eval.checkpoints = 'last,best'
  config.eval.seed = 0
  # AutoAttack (jard.evaluate_autoattack) after the suite: version
  # 'standard' | 'plus' | 'rand' ('' skips it), the reference's iterations
  # and Square queries, and the examples (-1: config.eval.num_examples).
  config.eval.autoattack = ml_collections.ConfigDict()
  config.eval.autoattack.version = 'standard'
  config.eval.autoattack.n_iter = 100
  config.eval.autoattack.n_queries = 5000
  config.eval.autoattack.num_examples = -1
  # The robust-accuracy-vs-ε curve: ε values in 1/255 ('' skips it) and the
  # suite attacks drawn at each.
  config.eval.curve_epsilons = '2,4,6,8,12,16'
  config.eval.curve_attacks = 'pgd20_sat'
  # Transfer attacks: `attacks` crafted on a surrogate jard checkpoint
  # (a workdir or its train/ dir) of `model`, evaluated on this model.
  config.eval.transfer = ml_collections.ConfigDict()
  config.eval.transfer.checkpoint = ''
  config.eval.transfer.which = 'best'
  config.eval.transfer.model = ml_collections.ConfigDict()
  config.eval.transfer.model.name = ''
  config.eval.transfer.attacks = 'pgd20_sat,cw_inf'
  # Figures linked from eval/report.md: the training curves, and for
  # SmaraAD the teacher/student CAM grid (with the CAM MSE on the evaluated
  # examples), for ADER the attention grid.
  config.eval.figures = True
  # The radio protocol (jard.evaluate_radio), used for radio sources.
  config.eval.radio = ml_collections.ConfigDict()
  # Reference PNR (dB) of the accuracy-vs-SNR curves and the summary table.
  config.eval.radio.pnr = -10.0
  # PNR sweep (dB) and the SNRs (dB) at which accuracy-vs-PNR is reported.
  config.eval.radio.pnrs = '-20,-15,-10,-5,0'
  config.eval.radio.snrs = '0,10'
  config.eval.radio.steps = 10
  config.eval.radio.relative_step = 0.25

  # Frozen teachers by name (jard.teachers): model, checkpoint (empty: the
  # teachers stage trains it with `recipe`), which, evaluate, recipe.
  config.teachers = ml_collections.ConfigDict()
  # Further students trained and evaluated next to this one: name -> config
  # overrides (method/model groups replace the student's).
  config.baselines = ml_collections.ConfigDict()
  return config


def teacher(model_name: str, *, method: str, checkpoint: str = '',
            which: str = 'best', evaluate: bool = True, **model_kwargs):
  """A `config.teachers.<name>` entry trained with `method` if no checkpoint."""
  spec = ml_collections.ConfigDict()
  spec.model = ml_collections.ConfigDict(dict(name=model_name, **model_kwargs))
  spec.checkpoint = checkpoint
  spec.which = which
  spec.evaluate = evaluate
  spec.recipe = ml_collections.ConfigDict()
  spec.recipe.method = ml_collections.ConfigDict({'name': method})
  return spec


def trades_teacher(model_name: str = 'wrn34_10', **kw):
  """A robust teacher trained, when no checkpoint is given, with the TRADES
  recipe (β = 6, 10 × 0.007 at 0.031, init N, 76 epochs, ×0.1 at 75, wd
  2e-4): the released TRADES WRN-34-10 (84.92% clean, 53.08% AA) that ARD,
  RSLAD and MTARD distill from. Prefer `checkpoint=` (e.g. an imported
  `model_cifar_wrn.pt`, `jard.interop`)."""
  spec = teacher(model_name, method='trades', **kw)
  spec.recipe.method.beta = 6.0
  spec.recipe.attack = ml_collections.ConfigDict({'train': {
      'eps': 0.031, 'step_size': 0.007, 'steps': 10, 'init': 'N'}})
  spec.recipe.optimizer = ml_collections.ConfigDict({'weight_decay': 2e-4})
  spec.recipe.num_epochs = 76
  spec.recipe.schedule = ml_collections.ConfigDict({
      'name': 'piecewise', 'boundaries': (75,)})
  spec.recipe.select = ml_collections.ConfigDict({'metric': 'pgd20_trades'})
  return spec


def natural_teacher(model_name: str = 'resnet56', **kw):
  """A clean teacher (MTARD's CIFAR ResNet-56, ≈93% clean), trained without
  attacks when no checkpoint is given (200 epochs, ×0.1 at 100/150)."""
  spec = teacher(model_name, method='natural', **kw)
  spec.recipe.num_epochs = 200
  spec.recipe.schedule = ml_collections.ConfigDict({
      'name': 'piecewise', 'boundaries': (100, 150)})
  spec.recipe.select = ml_collections.ConfigDict({'metric': 'clean'})
  return spec


def ard_training(config, lr_bug: bool = False):
  """ARD's and IAD's shared recipe: init U, SGD wd 2e-4, 200 epochs, lr ×0.1
  at 100 and 150, best PGD-20 checkpoint. Their released lr helper re-sets
  lr = 0.1·lr at each boundary, so only one decay acts: `lr_bug=True`
  reproduces it (`piecewise_non_cumulative`); the default decays twice."""
  config.attack.train.init = 'U'
  config.optimizer.weight_decay = 2e-4
  config.num_epochs = 200
  config.schedule.boundaries = (100, 150)
  config.schedule.name = ('piecewise_non_cumulative' if lr_bug
                          else 'piecewise')
  config.select.metric = 'pgd20_sat'
  return config


def quick_distillation(config):
  """`quick` for a distillation config: tiny teachers trained for 4 steps."""
  quick(config)
  for name in config.teachers:
    config.teachers[name].model = ml_collections.ConfigDict(
        {'name': 'resnet8'})
    recipe = config.teachers[name].recipe
    with recipe.unlocked():
      recipe.num_epochs = 1
      recipe.num_train_steps = 4
    config.teachers[name].evaluate = False
  return config


def parse_arg(arg):
  """`'quick,foo=1'` -> {'quick': True, 'foo': '1'} (big_vision style).

  `:` separates variants too: `configs/smaraad.py:plus:quick`.
  """
  out = {}
  for part in (arg or '').replace(':', ',').split(','):
    if part:
      key, sep, value = part.partition('=')
      out[key] = value if sep else True
  return out


def quick(config):
  """Shrinks a config to a tiny CPU run: ResNet-8, 4 steps (used by tests)."""
  config.model.name = 'resnet8'
  config.batch_size = 32
  config.num_epochs = 1
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.attack.train.steps = 2
  config.select.num_examples = 32
  config.eval.batch_size = 32
  config.eval.num_examples = 64
  # Reduced AutoAttack (the report states the settings) and a short curve.
  config.eval.autoattack.n_iter = 10
  config.eval.autoattack.n_queries = 50
  config.eval.curve_epsilons = '4,8'
  config.progress_bar = False
  return config
