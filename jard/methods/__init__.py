"""Method registry: name -> `Method` (see `jard.methods.base`)."""

from jard.methods import ader
from jard.methods import atard
from jard.methods import ciard
from jard.methods import distillation
from jard.methods import smaraad
from jard.methods import standard
from jard.methods.base import AttackSpec
from jard.methods.base import COMPUTE_DTYPES
from jard.methods.base import Context
from jard.methods.base import Method
from jard.methods.base import Teacher

METHODS = {
    'natural': standard.NATURAL,
    'pgd_at': standard.PGD_AT,
    'trades': standard.TRADES,
    'mart': standard.MART,
    'atard': atard.ATARD,
    'ard': distillation.ARD,
    'iad': distillation.IAD,
    'rslad': distillation.RSLAD,
    'mtard': distillation.MTARD,
    'adaad': distillation.ADAAD,
    'smaraad': smaraad.SMARAAD,
    'smaraad_pp': smaraad.SMARAAD_PP,
    'ader': ader.ADER,
    'ciard': ciard.CIARD,
}


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'config.method.name={name!r} is not a registered method;'
                     f' choose one of {sorted(METHODS)}.')
  return METHODS[name]
