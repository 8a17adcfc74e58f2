r"""ARD (Goldblum et al., AAAI 2020): adversarially robust distillation.

The released recipe (baselines_facts.md §4): a MobileNetV2 student, the
TRADES WRN-34-10 teacher on clean inputs, α = 1 (no CE term), τ = 30, the
em KL reduction (τ²·KL/C); inner PGD-10 × 2/255 at 8/255 on the student's
CE, init U, student BatchNorm in *train* mode; SGD 0.1, momentum 0.9, wd
2e-4, batch 128 (256 on CIFAR-100), 200 epochs, lr ×0.1 at 100 and 150.
The released code's lr helper sets 0.1·lr at both epochs, so only the first
decay acts; that bug is fixed here (true piecewise decay) and reproduced
with `:lr_bug` (`schedule.name='piecewise_non_cumulative'`).

    python main.py --config=configs/ard.py \
        --config.teachers.robust.checkpoint=runs/trades_wrn
    python main.py --config=configs/ard.py:quick
    python main.py --config=configs/ard.py:lr_bug,model=resnet18
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'mobilenet_v2')
  config.method.name = 'ard'
  config.method.alpha = 1.0
  config.method.temperature = 30.0
  config.teachers.robust = default.trades_teacher()
  default.ard_training(config, lr_bug='lr_bug' in args)
  if 'quick' in args:
    default.quick_distillation(config)
  return config
