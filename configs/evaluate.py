r"""Evaluate any jard checkpoint with the full protocol (no training).

    python main.py --config=configs/evaluate.py \
        --config.checkpoint=runs/pgd_at [--workdir=runs/pgd_at_eval]

`checkpoint` is a jard run's workdir (or its `train/` directory). The model
and the test set come from that run's `config.json` unless set here
(`--config.model.name=...`, `--config.dataset.test=...`). The protocol is
METHODS.md's: clean, FGSM, PGD-20 (both step sizes), CW∞, the robustness
curve over ε, AutoAttack standard on every test example, and optionally
transfer attacks from a surrogate (`--config.eval.transfer.checkpoint=...
--config.eval.transfer.model.name=...`) and Square with a small budget
(`--config.eval.attacks=...,square100`). `report.md`, `results.json` and
`robust_accuracy_vs_eps.png` are written to the workdir.

Variants: `:quick` (64 examples, reduced AutoAttack: a smoke test).
"""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg)
  config = default.get_config()
  config.stages = 'eval'
  # The run to evaluate: a jard workdir or its train/ directory.
  config.checkpoint = ''
  # '' = take the model and the test set from the checkpoint's config.json.
  config.model.name = ''
  config.dataset.test = ''
  config.dataset.train = ''
  if 'quick' in args:
    default.quick(config)
    config.model.name = ''
  return config
