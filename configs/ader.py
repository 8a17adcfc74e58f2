r"""ADER (Niu et al., 2025): dual-teacher adversarial distillation with
attention maps (`jard.methods.ader`).

CIFAR-10 (the paper's setting): a ResNet-18 student with an attention
branch after stage 3 (8×8 maps), a clean ResNet-56 teacher on x and an
adversarial WRN-34-10 (TRADES) teacher on x'; logits and attention-map KL,
the convergence-aware weight (β = 1); x' = PGD-10 × 2/255 at 8/255 on the
student's CE, init N. SGD 0.1, momentum 0.9, wd 2e-4 (the paper is silent),
batch 128, 300 epochs, ×0.1 at 215, 260 and 285. Without checkpoints the
teacher stage trains both teachers (`--config.teachers.<name>.checkpoint=`
takes a jard run or a PyTorch state_dict; a teacher without an attention
branch provides activation attention).

Variants (combine with `:` or `,`): `cifar100` (clean WRN-22-6 and
adversarial WRN-70-16 teachers, `tfds:cifar100`), `mobilenet` (MobileNetV2
student, branch after stage 5), `quick`, and the ablations
`teachers=clean|adversarial` and `distill=logits|attention`.

    python main.py --config=configs/ader.py
    python main.py --config=configs/ader.py:mobilenet
    python main.py --config=configs/ader.py:quick,teachers=clean
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.model.name = 'resnet18'
  config.model.attention_stage = 3
  config.method.name = 'ader'
  config.method.beta = 1.0             # convergence sensitivity (Eq. 9)
  config.method.aux_weight = 1.0       # CE of the branch's auxiliary logits
  config.method.teachers = args.get('teachers', 'both')
  config.method.distill = args.get('distill', 'both')
  # Map → distribution over locations: 'softmax' (of map/τ) or 'l1'.
  config.method.map_normalization = 'softmax'
  config.method.map_temperature = 1.0
  config.teachers.natural = default.natural_teacher('resnet56')
  config.teachers.robust = default.trades_teacher('wrn34_10')
  config.attack.train.init = 'N'
  config.optimizer.weight_decay = 2e-4
  config.batch_size = 128
  config.num_epochs = 300
  config.schedule.boundaries = (215, 260, 285)
  config.select.metric = 'pgd20_sat'
  if 'mobilenet' in args:
    config.model.name = 'mobilenet_v2'
    config.model.attention_stage = 5
  if 'cifar100' in args:
    config.dataset.train = config.dataset.test = 'tfds:cifar100'
    config.dataset.num_classes = 100
    config.teachers.natural = default.natural_teacher('wrn22_6')
    config.teachers.robust = default.trades_teacher('wrn70_16')
  if 'quick' in args:
    default.quick_distillation(config)
    config.model.attention_stage = 2  # resnet8: 3 stages
  return config
