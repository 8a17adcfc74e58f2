r"""MTARD (Zhao et al., ECCV 2022): multi-teacher adversarial distillation.

The released CIFAR-10 recipe (baselines_facts.md §7): ResNet-18 student; the
adversarial teacher (TRADES WRN-34-10) evaluated at x', the natural teacher
(a clean CIFAR ResNet-56, ≈93.18%) at x; outer w_adv·KL(p_Tadv(x') ‖
p_S(x')) + w_nat·KL(p_Tnat(x) ‖ p_S(x)) with the smoothed-entropy KL and
Σ/(10·B); adaptive weights (γ = 1, η = 0.025, ×0.1 at each lr boundary,
start 0.5/0.5; L⁰ and the weights are checkpointed method state); inner
PGD-10 × 2/255 at 8/255 on the student's CE, init N, eval mode. SGD 0.1,
wd 2e-4, batch 128, 300 epochs, ×0.1 after 215, 260, 285.

    python main.py --config=configs/mtard.py
    python main.py --config=configs/mtard.py:quick
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'resnet18')
  config.method.name = 'mtard'
  config.method.gamma = 1.0
  config.method.eta = 0.025
  config.teachers.robust = default.trades_teacher()
  config.teachers.natural = default.natural_teacher('resnet56')
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 2e-4
  config.num_epochs = 300
  config.schedule.boundaries = (215, 260, 285)
  # η is cut ×0.1 with the learning rate.
  config.method.eta_boundaries = config.schedule.boundaries
  config.select.metric = 'pgd20_trades'
  if 'quick' in args:
    default.quick_distillation(config)
  return config
