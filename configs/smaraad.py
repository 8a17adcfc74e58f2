r"""SmaraAD / SmaraAD++ (Yin et al., CVPR 2024): soft-rank Spearman slack
matching and CAM attribution-region alignment (`jard.methods.smaraad`).

The paper's recipe (§4.2): ResNet-18 student (`model=mobilenet_v2` for the
other one), an adversarially trained WRN-34-10 teacher; SGD 0.1, momentum
0.9, wd 5e-4, batch 256, 200 epochs, lr ×0.1 at 115, 160 and 185; inner
PGD-10 × 2/255 at 8/255 (init N, student eval) maximising KL + L_align;
γ = 1000, c = 2, α = 1 (SmaraAD) and λ = 0.1 (SmaraAD++). The paper's
teachers were trained with extra generated data; give such a checkpoint
with `--config.teachers.robust.checkpoint=...` (a jard run or a PyTorch
state_dict, `jard.interop`); without one the teacher stage trains a TRADES
WRN-34-10 (the public ARD/RSLAD teacher).

Variants (combine with `:` or `,`): `plus` (SmaraAD++, Eq. 10), `quick`
(a tiny CPU run), `cifar100` (`tfds:cifar100`, 100 classes),
`model=<registry CNN>`.

    python main.py --config=configs/smaraad.py
    python main.py --config=configs/smaraad.py:plus
    python main.py --config=configs/smaraad.py:plus:quick
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = args.get('model', 'resnet18')
  config.method.name = 'smaraad_pp' if 'plus' in args else 'smaraad'
  config.method.gamma = 1000.0  # soft-rank sharpness, on probabilities
  config.method.c = 2.0         # Eq. 9 constant
  config.method.alpha = 1.0     # weight of the adversarial terms (Eq. 9)
  config.method.lam = 0.1       # teacher-confidence exponent (Eq. 10)
  # CAM class: 'label' (y) or 'teacher_pred' (the teacher's argmax).
  config.method.cam_class = 'label'
  config.teachers.robust = default.trades_teacher()
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 5e-4
  config.batch_size = 256
  config.num_epochs = 200
  config.schedule.boundaries = (115, 160, 185)
  config.select.metric = 'pgd20_sat'
  if 'cifar100' in args:
    config.dataset.train = config.dataset.test = 'tfds:cifar100'
    config.dataset.num_classes = 100
  if 'quick' in args:
    default.quick_distillation(config)
  return config
