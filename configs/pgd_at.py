r"""PGD-AT (Madry et al., ICLR 2018) of a CIFAR-10 ResNet-18.

Inner maximisation per METHODS.md: PGD-10 on CE, step 2/255, ε 8/255, init U
(Madry), student in eval mode during the attack. Training follows the AD
papers' PGD-AT baseline (AdaAD's `Plain_Madry`, baselines_facts.md §1): SGD
0.1, momentum 0.9, wd 5e-4, batch 128, 110 epochs with lr ÷10 at 100 and
÷100 at 105; `:init=N` switches to that baseline's 0.001-Gaussian start.
Expected (paper tables): ≈83% clean, ≈48% AutoAttack for ResNet-18.

    python main.py --config=configs/pgd_at.py
    python main.py --config=configs/pgd_at.py:quick            # tiny CPU run
    python main.py --config=configs/pgd_at.py:init=N           # AdaAD's start
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.method.name = 'pgd_at'
  config.attack.train.init = args.get('init', 'U')
  config.optimizer.weight_decay = 5e-4
  config.num_epochs = 110
  config.schedule.boundaries = (100, 105)
  config.select.metric = 'pgd20_sat'
  if 'quick' in args:
    default.quick(config)
  return config
