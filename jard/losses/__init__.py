"""Pure loss functions. Per-example outputs unless a `reduction` is given."""

from jard.losses import cam
from jard.losses import spatial_attention
from jard.losses import spearman
from jard.losses.attention import attention_map_loss
from jard.losses.attention import head_average
from jard.losses.attention import parse_layer_groups
from jard.losses.classification import REDUCTIONS
from jard.losses.classification import cross_entropy
from jard.losses.classification import distillation_kl
from jard.losses.classification import kl_divergence
from jard.losses.classification import margin_loss
from jard.losses.classification import reduce_classwise
from jard.losses.robust import mart_loss
from jard.losses.robust import trades_loss
