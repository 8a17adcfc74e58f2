"""jard: adversarial robustness distillation in JAX/Flax.

Subpackages: `attacks`, `losses`, `models`, `methods`, `data`; modules
`train`, `evaluate`, `evaluate_radio`, `pipeline`, `teachers`, `checkpoint`,
`parallel`. See the README.
"""

__version__ = '0.1.0'
