"""ATARD: attention-based adversarial robust distillation (radio signals).

A compact transformer student learns from a frozen, adversarially trained
transformer teacher by matching the teacher's *adversarial attention maps*:
the head-averaged attention of each student layer, on the student's
adversarial example x′, is pulled towards the mean map of a group of teacher
layers on the same x′ (`losses.attention_map_loss`):

.. math::
   L = CE(S(x'), y) + β \\sum_l \\| \\bar A_S^l(x') -
       \\bar A_T^{G(l)}(x') \\|^2
       \\; [+ α τ^2 KL(p_T^τ(x) \\| p_S^τ(x'))].

The inner maximisation is PGD on the student's CE under the configured
threat model (radio: L2 with a per-example PNR budget, `attacks.radio`);
the teacher is in eval mode with stopped gradients.

Hyperparameters (`config.method`):
  * `distill`: `'attention'` (ATARD: CE + β·attention), `'logits'` (the
    logits-only ablation: CE + α·KL, i.e. ARD's logit term on x′) or
    `'both'`.
  * `beta`: β, the attention weight (the entries of a 17 × 17 map are ≈1/17,
    so squared differences are small and β is large).
  * `alpha`, `temperature`: the ARD logit term (α = 0 disables it).
  * `layer_groups`: teacher layers per student layer, 1-based
    (`'1-3,4-6'`: teacher 1–3 → student 1, 4–6 → student 2).

The paper gives neither β nor the optimiser; METHODS.md ("ATARD") records
the choices. Reference: Zhang et al., IEEE IoT Journal 2023
(arXiv 2506.11892), Eq. 14–15.
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard.methods.base import accuracy
from jard.methods.base import Method

DISTILL = ('attention', 'logits', 'both')
TEACHER = 'robust'


def atard_loss(params, batch, keys, ctx):
  """The ATARD outer loss (module docstring); batch holds `snr` for radio."""
  x, y = batch['image'], batch['label']
  hp = ctx.hp
  distill = hp.get('distill', 'attention')
  if distill not in DISTILL:
    raise ValueError(f'config.method.distill={distill!r}; choose one of '
                     f'{DISTILL}.')
  teacher = ctx.teachers[TEACHER]
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  student, batch_stats = ctx.apply(params, x_adv, train=True)
  ce = losses.cross_entropy(student.logits, y)
  loss = ce
  metrics = {'adv_accuracy': accuracy(student.logits, y),
             'ce': jnp.mean(ce)}
  if distill in ('attention', 'both'):
    groups = losses.parse_layer_groups(hp.get('layer_groups', '1-3,4-6'))
    attention = losses.attention_map_loss(
        student.attention, teacher(x_adv).attention, groups)
    loss = loss + hp.get('beta', 3000.0) * attention
    metrics['attention_loss'] = jnp.mean(attention)
  alpha = hp.get('alpha', 0.0) if distill == 'both' else (
      hp.get('alpha', 1.0) if distill == 'logits' else 0.0)
  if alpha:
    tau = hp.get('temperature', 1.0)
    kl = losses.distillation_kl(teacher(x).logits, student.logits,
                                temperature=tau, reduction='none')
    loss = loss + alpha * tau ** 2 * kl
    metrics['kl'] = jnp.mean(kl)
  return jnp.mean(loss), {'batch_stats': batch_stats, 'metrics': metrics}


ATARD = Method('atard', atard_loss, teachers=(TEACHER,),
               doc='ATARD adversarial attention-map distillation.')
