"""ADER's attention branch: a spatial attention map that refines features.

After a chosen stage of a CNN (feature map g, N channels) the branch
computes, following ADER (Niu et al., 2025, §2.1, after ABN: Fukui et al.,
CVPR 2019) and METHODS.md:

    h   = ReLU(BN(conv3×3_N(g)))
    k   = conv1×1_K(h)                 K = number of classes
    M   = sigmoid(conv1×1_1(k))        the attention map, [B, h, w] in [0, 1]
    aux = GAP(k)                       auxiliary logits, [B, K], trained by CE
    g'  = (1 + M) ⊙ g                  (Eq. 2) feeds the rest of the network

The two 1×1 convolutions carry a bias (the others do not, as every conv
before a BatchNorm here), so the map starts near sigmoid(0) = 1/2 everywhere
rather than at a fixed point of the input scale. The branch leaves the
logits path shape-compatible: g' has g's shape.
"""

from typing import Optional

import flax.linen as nn
import jax

from jard.models import layers


class AttentionBranch(nn.Module):
  """Returns `(refined features, attention map [B, h, w], aux logits)`."""
  num_classes: int
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, g: jax.Array, train: bool):
    h = layers.conv(g.shape[-1], 3, 1, name='conv')(g)
    h = nn.relu(layers.batch_norm(train, self.bn_axis_name, name='bn')(h))
    k = layers.conv(self.num_classes, 1, 1, padding='VALID', use_bias=True,
                    name='class_conv')(h)
    attention = nn.sigmoid(layers.conv(1, 1, 1, padding='VALID',
                                       use_bias=True, name='map_conv')(k))
    aux_logits = layers.global_avg_pool(k)
    return (1.0 + attention) * g, attention[..., 0], aux_logits


def check_stage(stage: int, num_stages: int, model: str) -> None:
  """`attention_stage` is 0 (no branch) or a 1-based stage index."""
  if not 0 <= stage <= num_stages:
    raise ValueError(
        f'config.model.attention_stage={stage} for {model}, which has '
        f'{num_stages} stages: use 0 (no branch) or 1..{num_stages}.')
