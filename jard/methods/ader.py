r"""ADER (Niu et al., 2025): dual-teacher adversarial distillation with
attention maps.

The student carries an attention branch (`config.model.attention_stage`)
that outputs a spatial map M_S ∈ [0, 1]^{h×w} and auxiliary logits. A clean
teacher T_nat on clean inputs and an adversarial teacher T_rob on
adversarial inputs supervise its logits and its map (Eq. 5–6):

    L_clean = KL(p_Tnat(x) ‖ p_S(x))   + KL(P(M_S(x))  ‖ P(M_Tnat(x)))
    L_adv   = KL(p_Trob(x') ‖ p_S(x')) + KL(P(M_S(x')) ‖ P(M_Trob(x')))

with the logits KL teacher-first and summed over classes (`bm`), and the map
KL in Eq. 3's order, student first (`losses.spatial_attention`; P is a
softmax over locations, or `l1`). x' is PGD-10 on CE(S(x'), y) (Eq. 7),
init N, the student in eval mode. A teacher with its own branch supplies
its M; one without (an imported checkpoint) its activation attention.

The convergence-aware weight (Eq. 8–10): r_i = (L_i(t)/L_i(0))^β, β = 1,
ω = r_clean / (r_clean + r_adv), and

    L = ω·L_clean + (1 − ω)·L_adv + aux_weight·½(CE(a_S(x), y) + CE(a_S(x'), y))

where ω is a constant in the gradient, computed from this step's batch
losses (averaged over devices), and L_i(0) are the first step's losses, kept
in the checkpointed method state. ω thus grows toward the teacher whose loss
has fallen less. The auxiliary CE trains the branch's class maps as ABN
does; its weight `aux_weight` = 1 is ours (the paper gives none).

Ablations (`config.method`): `teachers` = both | clean | adversarial (ω
fixed to 1 or 0 for a single teacher) and `distill` = both | logits |
attention (which of the two KL terms each L_i keeps).
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard.losses import spatial_attention
from jard.methods.base import accuracy
from jard.methods.base import Method

ROBUST = 'robust'    # the adversarial teacher, on x'
NATURAL = 'natural'  # the clean teacher, on x
TEACHERS = ('both', 'clean', 'adversarial')
DISTILL = ('both', 'logits', 'attention')


def teacher_map(outputs) -> jax.Array:
  """A teacher's spatial map: its branch's M, else activation attention."""
  if outputs.attention_map is not None:
    return outputs.attention_map
  return spatial_attention.activation_attention(outputs.features)


def ader_terms(teacher_logits, teacher_attention, student_logits,
               student_attention, *, distill='both', normalization='softmax',
               temperature=1.0):
  """One teacher's loss per example (Eq. 5 or 6) `[B]`."""
  loss = jnp.zeros(student_logits.shape[:1], student_logits.dtype)
  if distill in ('both', 'logits'):
    loss = loss + losses.distillation_kl(
        jax.lax.stop_gradient(teacher_logits), student_logits,
        reduction='none')
  if distill in ('both', 'attention'):
    loss = loss + spatial_attention.attention_kl(
        student_attention, teacher_attention, normalization=normalization,
        temperature=temperature)
  return loss


def ader_weight(state, loss_clean, loss_adv, *, beta=1.0, teachers='both'):
  """ω of Eq. 9–10 and the new state `{'loss0_clean', 'loss0_adv',
  'started'}` (the first call stores L(0)); pure."""
  loss_clean, loss_adv = jax.lax.stop_gradient((loss_clean, loss_adv))
  started = state['started']
  loss0_clean = jnp.where(started, state['loss0_clean'], loss_clean)
  loss0_adv = jnp.where(started, state['loss0_adv'], loss_adv)
  r_clean = (loss_clean / loss0_clean) ** beta
  r_adv = (loss_adv / loss0_adv) ** beta
  omega = {'both': r_clean / (r_clean + r_adv), 'clean': jnp.float32(1.0),
           'adversarial': jnp.float32(0.0)}[teachers]
  return omega, {'loss0_clean': loss0_clean, 'loss0_adv': loss0_adv,
                 'started': jnp.ones_like(started)}


def ader_init_state(hp, num_classes):
  del hp, num_classes
  return {'loss0_clean': jnp.float32(1.0), 'loss0_adv': jnp.float32(1.0),
          'started': jnp.bool_(False)}


def ader_loss(params, batch, keys, ctx):
  """ADER: module docstring."""
  x, y = batch['image'], batch['label']
  hp = ctx.hp
  distill, teachers = hp.get('distill', 'both'), hp.get('teachers', 'both')
  kw = dict(distill=distill, normalization=hp.get('map_normalization',
                                                  'softmax'),
            temperature=hp.get('map_temperature', 1.0))
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  adv, stats = ctx.apply(params, x_adv, train=True)
  clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
  if adv.attention_map is None:
    raise ValueError('ader needs a student with an attention branch: set '
                     'config.model.attention_stage (e.g. 3 for resnet18).')
  t_nat = ctx.teachers[NATURAL](x)        # the clean teacher sees x
  t_rob = ctx.teachers[ROBUST](x_adv)     # the adversarial teacher sees x'
  clean_term = ader_terms(t_nat.logits, teacher_map(t_nat), clean.logits,
                          clean.attention_map, **kw)
  adv_term = ader_terms(t_rob.logits, teacher_map(t_rob), adv.logits,
                        adv.attention_map, **kw)
  means = (jnp.mean(clean_term), jnp.mean(adv_term))
  if ctx.axis_name is not None:  # one ω, identical on every device
    means = jax.lax.pmean(means, ctx.axis_name)
  omega, state = ader_weight(ctx.state, *means, beta=hp.get('beta', 1.0),
                             teachers=teachers)
  omega = jax.lax.stop_gradient(omega)
  aux = 0.5 * (losses.cross_entropy(clean.aux_logits, y)
               + losses.cross_entropy(adv.aux_logits, y))
  loss = (omega * clean_term + (1.0 - omega) * adv_term
          + hp.get('aux_weight', 1.0) * aux)
  metrics = {'adv_accuracy': accuracy(adv.logits, y),
             'clean_accuracy': accuracy(clean.logits, y),
             'loss_clean': means[0], 'loss_adv': means[1], 'omega': omega,
             'aux_accuracy': accuracy(adv.aux_logits, y),
             'loss0_clean': state['loss0_clean'],
             'loss0_adv': state['loss0_adv']}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def ader_update_state(state, metrics, ctx):
  """Stores L(0) once (the metrics are already identical across devices)."""
  del ctx
  return {'loss0_clean': metrics['loss0_clean'],
          'loss0_adv': metrics['loss0_adv'],
          'started': jnp.ones_like(state['started'])}


ADER = Method('ader', ader_loss, teachers=(ROBUST, NATURAL),
              init_state=ader_init_state, update_state=ader_update_state,
              doc='ADER: clean + adversarial teachers, logits and attention '
              'maps, convergence-aware weight.')
