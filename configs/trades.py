r"""TRADES (Zhang et al., ICML 2019), the official CIFAR-10 recipe.

WRN-34-10, β = 6; inner: 10 × 0.007 at ε = 0.031, init N, KL objective, eval
mode; SGD 0.1, momentum 0.9, wd 2e-4, batch 128, 76 epochs with ×0.1 at 75.
The released checkpoint: 84.92% clean, 53.08% AutoAttack.

    python main.py --config=configs/trades.py
    python main.py --config=configs/trades.py:quick
    python main.py --config=configs/trades.py:model=resnet18
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.method.name = 'trades'
  config.method.beta = 6.0
  config.model.name = args.get('model', 'wrn34_10')
  config.attack.train.eps = 0.031
  config.attack.train.step_size = 0.007
  config.attack.train.steps = 10
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 2e-4
  config.num_epochs = 76
  config.schedule.boundaries = (75,)
  config.select.metric = 'pgd20_trades'
  if 'quick' in args:
    default.quick(config)
  return config
