r"""Natural (clean) training of a CIFAR-10 ResNet-18: the non-robust baseline.

SGD 0.1, momentum 0.9, wd 5e-4, batch 128, 200 epochs, ×0.1 at 100 and 150
(the ARD/RSLAD teacher-style schedule). Expected ≈95% clean, 0% under PGD.

    python main.py --config=configs/natural.py
    python main.py --config=configs/natural.py:quick
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.method.name = 'natural'
  config.attack.train.steps = 0
  config.num_epochs = 200
  config.schedule.boundaries = (100, 150)
  config.select.metric = 'clean'
  if 'quick' in args:
    default.quick(config)
  return config
