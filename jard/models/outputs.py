"""The one output struct every jard model returns.

Methods, attacks and evaluation read model outputs only through `Outputs`, so
a method written for a ResNet works unchanged on a WRN, a MobileNetV2 or the
AMC transformer. Fields that a model does not produce are `None` (or `()` for
`attention`), never missing.
"""

from typing import Optional

import flax
import jax


@flax.struct.dataclass
class Outputs:
  """Model outputs.

  Attributes:
    logits: `[B, K]` class scores (pre-softmax).
    features: `[B, H, W, C]` last feature map before global pooling (for CAM
      and activation attention); `None` for models without a spatial map.
    attention: tuple of per-layer attention probabilities `[B, heads, T, T]`
      (transformers); empty for CNNs.
    attention_map: `[B, h, w]` attention map in [0, 1] (ADER branch), or None.
    aux_logits: `[B, K]` auxiliary logits (ADER branch), or None.
  """
  logits: jax.Array
  features: Optional[jax.Array] = None
  attention: tuple[jax.Array, ...] = ()
  attention_map: Optional[jax.Array] = None
  aux_logits: Optional[jax.Array] = None
