r"""RSLAD (Zi et al., ICCV 2021): robust soft label adversarial distillation.

The released recipe (baselines_facts.md §6): ResNet-18 student, the TRADES
WRN-34-10 teacher on clean inputs (its soft labels replace the labels
everywhere), outer 5/6·KL(p_T(x) ‖ p_S(x')) + 1/6·KL(p_T(x) ‖ p_S(x)) with
the smoothed-entropy KL and the Σ/(10·B) reduction (em on CIFAR-10, 10·em
on CIFAR-100); inner PGD-10 × 2/255 at 8/255 maximising Σ KL(p_T(x) ‖
p_S(x')), init N, student in eval mode. SGD 0.1, wd 2e-4, batch 128, 300
epochs, ×0.1 after 215, 260, 285.

    python main.py --config=configs/rslad.py
    python main.py --config=configs/rslad.py:quick
    python main.py --config=configs/rslad.py:model=mobilenet_v2
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'resnet18')
  config.method.name = 'rslad'
  config.teachers.robust = default.trades_teacher()
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 2e-4
  config.num_epochs = 300
  config.schedule.boundaries = (215, 260, 285)
  config.select.metric = 'pgd20_trades'
  if 'quick' in args:
    default.quick_distillation(config)
  return config
