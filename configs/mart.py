r"""MART (Wang et al., ICLR 2020), the official ResNet-18 recipe.

Inner: PGD on CE, 10 × 0.007 at ε = 0.031, init N, eval mode. ResNet-18:
β = 5, SGD lr 0.01, wd 3.5e-3, 120 epochs, ×0.1 at 75, 90, 100. The `:wrn`
variant uses WRN-34-10 with β = 6, lr 0.1, wd 7e-4 and 90 epochs.

    python main.py --config=configs/mart.py
    python main.py --config=configs/mart.py:wrn
    python main.py --config=configs/mart.py:quick
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.method.name = 'mart'
  config.attack.train.eps = 0.031
  config.attack.train.step_size = 0.007
  config.attack.train.steps = 10
  config.attack.train.init = 'N'
  config.schedule.boundaries = (75, 90, 100)
  config.select.metric = 'pgd20_trades'
  if 'wrn' in args:
    config.model.name = 'wrn34_10'
    config.method.beta = 6.0
    config.optimizer.lr = 0.1
    config.optimizer.weight_decay = 7e-4
    config.num_epochs = 90
  else:
    config.model.name = 'resnet18'
    config.method.beta = 5.0
    config.optimizer.lr = 0.01
    config.optimizer.weight_decay = 3.5e-3
    config.num_epochs = 120
  if 'quick' in args:
    default.quick(config)
  return config
