"""Pure adversarial attacks (see `jard.attacks.pgd` for the contract).

AutoAttack's attacks live in their modules, imported as modules so that
their names stay free: `apgd` (APGD-CE/DLR/T), `fab` (FAB-T, FAB), `square`
and the cascade `autoattack.autoattack`.
"""

from jard.attacks.pgd import cw_inf
from jard.attacks.pgd import fgsm
from jard.attacks.pgd import INITS
from jard.attacks.pgd import NORMS
from jard.attacks.pgd import pgd
from jard.attacks.pgd import pgd_with_state
from jard.attacks.pgd import project
from jard.attacks.pgd import random_start
from jard.attacks import apgd
from jard.attacks import autoattack
from jard.attacks import fab
from jard.attacks import radio
from jard.attacks import square
from jard.attacks.radio import pnr_budget
