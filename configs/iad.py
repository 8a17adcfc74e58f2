r"""IAD-I (Zhu et al., ICLR 2022): introspective adversarial distillation.

The released IAD-I recipe (baselines_facts.md §5): ARD's inner attack (CE,
init U, student BatchNorm in train mode) and outer loss with τ = 1 and the
bm reduction, plus from epoch 60 the introspection term
(1/B)Σ(1 − a_i) KL(p_S(x) ‖ p_S(x')), a_i = p_T(x')_y^0.1. Default teacher:
IAD's own PGD-AT ResNet-18; student ResNet-18. SGD 0.1, wd 2e-4, batch 128,
200 epochs, ×0.1 at 100/150 (`:lr_bug` reproduces the released one-decay
helper, as ARD).

    python main.py --config=configs/iad.py
    python main.py --config=configs/iad.py:quick
"""

import ml_collections

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'resnet18')
  config.method.name = 'iad'
  config.method.alpha = 1.0
  config.method.temperature = 1.0
  config.method.beta = 0.1
  config.method.begin = 60
  # IAD's teacher: its own PGD-AT ResNet-18 (pgd_at recipe, 110 epochs).
  config.teachers.robust = default.teacher('resnet18', method='pgd_at')
  config.teachers.robust.recipe.num_epochs = 110
  config.teachers.robust.recipe.schedule = ml_collections.ConfigDict(
      {'name': 'piecewise', 'boundaries': (100, 105)})
  default.ard_training(config, lr_bug='lr_bug' in args)
  if 'quick' in args:
    default.quick_distillation(config)
    config.method.begin = 0  # exercise the introspection term
  return config
