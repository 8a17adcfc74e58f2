"""Pure adversarial attacks (see `jard.attacks.pgd` for the contract)."""

from jard.attacks.pgd import cw_inf
from jard.attacks.pgd import fgsm
from jard.attacks.pgd import INITS
from jard.attacks.pgd import NORMS
from jard.attacks.pgd import pgd
from jard.attacks.pgd import pgd_with_state
from jard.attacks.pgd import project
from jard.attacks.pgd import random_start
from jard.attacks import radio
from jard.attacks.radio import pnr_budget
