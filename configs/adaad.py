r"""AdaAD (Huang et al., CVPR 2023): adaptive adversarial distillation.

The released recipe (baselines_facts.md §8): ResNet-18 student; inner PGD-10
× 2/255 at 8/255 (pass these: the script's defaults are 16/255 and 4/255)
maximising Σ KL(p_T(x') ‖ p_S(x')) with the teacher re-evaluated at every
step, init N, eval mode; outer α·KL(p_T(x') ‖ p_S(x')) + (1−α)·KL(p_T(x) ‖
p_S(x)), α = 1, em reduction on CIFAR-10 (bm on CIFAR-100). SGD 0.1, wd
5e-4, batch 128, 200 epochs, lr ÷10 at 100 and ÷100 at 150, best PGD-10
checkpoint. The paper's teacher is RobustBench Chen2021LTD_WRN34_20 (or
_WRN34_10); give it with `--config.teachers.robust.checkpoint`; without one
the teacher stage trains a TRADES WRN-34-10.

    python main.py --config=configs/adaad.py
    python main.py --config=configs/adaad.py:quick
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'resnet18')
  config.method.name = 'adaad'
  config.method.alpha = 1.0
  # 'em' (CIFAR-10 code) or 'bm' (CIFAR-100 code).
  config.method.reduction = 'em'
  config.teachers.robust = default.trades_teacher()
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 5e-4
  config.num_epochs = 200
  config.schedule.boundaries = (100, 150)
  config.select.metric = 'pgd20_sat'
  if 'quick' in args:
    default.quick_distillation(config)
  return config
