"""The adversarial distillation baselines: ARD, IAD, RSLAD, MTARD, AdaAD.

Each reproduces its released recipe (METHODS.md, "Distillation baselines";
`baselines_facts.md` §4–8, §13): its own inner loss, init, student BatchNorm
mode during the attack, KL reduction and temperature. Notation:
p^τ(z) = softmax(z/τ), KL(p‖q) with the target first, `bm` = Σ/B,
`em` = Σ/(B·C); T is the frozen teacher (eval mode, stopped gradients).

| method | inner max (student BN) | init | outer loss | reduction |
|---|---|---|---|---|
| `ard` | CE(S(x'), y) (train) | U | α τ² KL(p_T^τ(x) ‖ p_S^τ(x')) + (1−α) CE(S(x), y) | em |
| `iad` | CE (train) | U | τ² KL(p_T^τ(x) ‖ p_S^τ(x')) + 1[epoch ≥ 60] (1/B)Σ(1−a_i) KL(p_S(x) ‖ p_S(x')) | bm |
| `rslad` | Σ KL(p_T(x) ‖ p_S(x')) (eval) | N | 5/6 KL(p_T(x) ‖ p_S(x')) + 1/6 KL(p_T(x) ‖ p_S(x)) | bm/10 |
| `mtard` | CE(S(x'), y) (eval) | N | w_adv KL(p_Tadv(x') ‖ p_S(x')) + w_nat KL(p_Tnat(x) ‖ p_S(x)) | bm/10 |
| `adaad` | Σ KL(p_T(x') ‖ p_S(x')), T re-evaluated each step (eval) | N | α KL(p_T(x') ‖ p_S(x')) + (1−α) KL(p_T(x) ‖ p_S(x)) | em (C10) / bm (C100) |

Details the released code fixes and jard keeps:

* ARD and IAD attack the student in *train* mode: every PGD step uses batch
  statistics and updates the BatchNorm running averages
  (`attacks.pgd_with_state`), so the running statistics move 10 + 1 times
  per step.
* IAD: a_i = p_T(x'_i)_{y_i}^β (β = 0.1) is a constant; the introspection
  target p_S(x) is *not* detached; only that term is weighted (IAD-I code).
* RSLAD and MTARD write KL as Σ −b log q + b log(b + 1e-5) (a smoothed
  entropy; the gradient is the KL's), with the `em` reduction on CIFAR-10 and
  10·em on CIFAR-100: both are Σ/(10·B), which is how jard writes it.
* MTARD's weights (`mtard_weights`): L⁰ = the first step's two losses,
  r_k = (L_k/L⁰_k)^γ, w_nat ← w_nat − η (w_nat − r_nat/(r_adv + r_nat)),
  w_adv = 1 − w_nat, computed from the current batch (averaged over devices)
  *before* the step's loss uses them; η ×0.1 at each lr boundary. L⁰ and
  the weights are the method state (checkpointed).
* AdaAD differentiates through the teacher at the moving x' in the attack.

Hyperparameters are `config.method` fields; the configs hold each paper's.
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard.methods.base import accuracy
from jard.methods.base import Method

ROBUST = 'robust'    # the adversarially trained teacher
NATURAL = 'natural'  # MTARD's clean teacher


def _kl(target_logits, logits, temperature=1.0):
  """Per-example KL(p^τ(target) ‖ p^τ(logits)) summed over classes `[B]`."""
  return losses.distillation_kl(target_logits, logits,
                                temperature=temperature, reduction='none')


def smoothed_kl(target_logits, logits):
  """RSLAD/MTARD's per-example Σ_c −b_c log q_c + b_c log(b_c + 1e-5) `[B]`,
  with b = softmax(target), log q = log_softmax(logits)."""
  b = jax.nn.softmax(target_logits)
  return jnp.sum(-b * jax.nn.log_softmax(logits) + b * jnp.log(b + 1e-5),
                 axis=-1)


def _train_mode_attack(params, batch, keys, ctx):
  """PGD on CE_sum with the student in train mode (ARD, IAD); returns
  `(x_adv, batch_stats)` after the attack's forward passes. (`batch` also
  carries the SNR labels of a PNR budget.)"""
  params = jax.lax.stop_gradient(params)
  x, y = batch['image'], batch['label']

  def loss_fn(z, stats):
    outputs, stats = ctx.apply(params, z, train=True, batch_stats=stats)
    return losses.cross_entropy(outputs.logits, y), stats

  return ctx.attack.pgd_with_state(loss_fn, x, keys, ctx.batch_stats, batch)


# Outer losses on logits, per example `[B]` (the step takes the batch mean,
# so a per-example value v gives the reduction Σ v / B).


def ard_outer(teacher_clean, student_adv, student_clean, labels, *, alpha,
              temperature, num_classes):
  """α τ² KL(p_T^τ(x) ‖ p_S^τ(x')) / C + (1 − α) CE(S(x), y) (em KL)."""
  loss = alpha * temperature ** 2 * _kl(teacher_clean, student_adv,
                                        temperature) / num_classes
  if alpha < 1.0:
    loss = loss + (1.0 - alpha) * losses.cross_entropy(student_clean, labels)
  return loss


def iad_outer(teacher_clean, teacher_adv, student_adv, student_clean, labels,
              *, alpha, temperature, beta, introspect):
  """α [τ² KL(p_T^τ(x) ‖ p_S^τ(x')) + introspect·(1 − a) KL(p_S(x) ‖
  p_S(x'))] + (1 − α) CE(S(x), y), a = p_T(x')_y^β constant (bm)."""
  probs = jax.nn.softmax(teacher_adv)
  reliability = jax.lax.stop_gradient(
      jnp.take_along_axis(probs, labels[:, None], -1)[:, 0] ** beta)
  loss = alpha * (temperature ** 2 * _kl(teacher_clean, student_adv,
                                         temperature)
                  + introspect * (1.0 - reliability)
                  * _kl(student_clean, student_adv))
  if alpha < 1.0:
    loss = loss + (1.0 - alpha) * losses.cross_entropy(student_clean, labels)
  return loss


def rslad_outer(teacher_clean, student_adv, student_clean):
  """(5/6 k(T(x), S(x')) + 1/6 k(T(x), S(x))) / 10, k = `smoothed_kl`."""
  return (5.0 / 6.0 * smoothed_kl(teacher_clean, student_adv)
          + 1.0 / 6.0 * smoothed_kl(teacher_clean, student_clean)) / 10.0


def adaad_outer(teacher_adv, teacher_clean, student_adv, student_clean, *,
                alpha, scale):
  """scale·[α KL(p_T(x') ‖ p_S(x')) + (1 − α) KL(p_T(x) ‖ p_S(x))]."""
  loss = alpha * _kl(teacher_adv, student_adv)
  if alpha < 1.0:
    loss = loss + (1.0 - alpha) * _kl(teacher_clean, student_clean)
  return scale * loss


def ard_loss(params, batch, keys, ctx):
  """ARD (Goldblum et al., AAAI 2020): module docstring."""
  x, y = batch['image'], batch['label']
  alpha, tau = ctx.hp.get('alpha', 1.0), ctx.hp.get('temperature', 30.0)
  x_adv, stats = _train_mode_attack(params, batch, keys, ctx)
  student, stats = ctx.apply(params, x_adv, train=True, batch_stats=stats)
  student_clean = None
  if alpha < 1.0:  # the CE term needs the clean forward pass
    clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
    student_clean = clean.logits
  loss = ard_outer(ctx.teachers[ROBUST](x).logits, student.logits,
                   student_clean, y, alpha=alpha, temperature=tau,
                   num_classes=ctx.num_classes)
  metrics = {'adv_accuracy': accuracy(student.logits, y)}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def iad_loss(params, batch, keys, ctx):
  """IAD-I (Zhu et al., ICLR 2022): module docstring."""
  x, y = batch['image'], batch['label']
  hp = ctx.hp
  x_adv, stats = _train_mode_attack(params, batch, keys, ctx)
  student, stats = ctx.apply(params, x_adv, train=True, batch_stats=stats)
  clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
  teacher = ctx.teachers[ROBUST]
  introspect = (ctx.epoch >= hp.get('begin', 60)).astype(jnp.float32)
  loss = iad_outer(teacher(x).logits, teacher(x_adv).logits, student.logits,
                   clean.logits, y, alpha=hp.get('alpha', 1.0),
                   temperature=hp.get('temperature', 1.0),
                   beta=hp.get('beta', 0.1), introspect=introspect)
  metrics = {'adv_accuracy': accuracy(student.logits, y),
             'introspection_on': introspect}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def rslad_inner(teacher_clean, student_adv):
  """RSLAD's attack objective per example: KL(p_T(x) ‖ p_S(x')) (summed)."""
  return _kl(teacher_clean, student_adv)


def rslad_loss(params, batch, keys, ctx):
  """RSLAD (Zi et al., ICCV 2021): module docstring."""
  x, y = batch['image'], batch['label']
  soft = jax.lax.stop_gradient(ctx.teachers[ROBUST](x).logits)
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: rslad_inner(soft, logits_fn(z)), x, keys,
                         batch)
  student, stats = ctx.apply(params, x_adv, train=True)
  clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
  loss = rslad_outer(soft, student.logits, clean.logits)
  metrics = {'adv_accuracy': accuracy(student.logits, y)}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def mtard_terms(teacher_adv, teacher_nat, student_adv, student_clean):
  """MTARD's two terms per example: k(T_adv(x'), S(x'))/10 and
  k(T_nat(x), S(x))/10 (`smoothed_kl`, Σ/(10·B) after the batch mean)."""
  return (smoothed_kl(teacher_adv, student_adv) / 10.0,
          smoothed_kl(teacher_nat, student_clean) / 10.0)


def mtard_weights(state, loss_adv, loss_nat, hp, epoch):
  """MTARD's adaptive teacher weights (module docstring); pure.

  Args:
    state: `{'w_nat', 'loss0_adv', 'loss0_nat', 'started'}`.
    loss_adv, loss_nat: this step's two losses (means over the batch).
    hp: `gamma`, `eta`, `eta_boundaries` (epochs where η ×0.1).
    epoch: the current epoch (traced).

  Returns:
    The new state; its `w_nat` (and 1 − w_nat) weight this step's loss.
  """
  loss_adv, loss_nat = jax.lax.stop_gradient((loss_adv, loss_nat))
  started = state['started']
  loss0_adv = jnp.where(started, state['loss0_adv'], loss_adv)
  loss0_nat = jnp.where(started, state['loss0_nat'], loss_nat)
  gamma = hp.get('gamma', 1.0)
  r_adv = (loss_adv / loss0_adv) ** gamma
  r_nat = (loss_nat / loss0_nat) ** gamma
  boundaries = jnp.asarray(tuple(hp.get('eta_boundaries', ())) or (1 << 30,))
  eta = hp.get('eta', 0.025) * 0.1 ** jnp.sum(epoch >= boundaries)
  w_nat = state['w_nat'] - eta * (state['w_nat'] - r_nat / (r_adv + r_nat))
  return {'w_nat': w_nat, 'loss0_adv': loss0_adv, 'loss0_nat': loss0_nat,
          'started': jnp.ones_like(started)}


def mtard_init_state(hp, num_classes):
  del hp, num_classes
  return {'w_nat': jnp.float32(0.5), 'loss0_adv': jnp.float32(1.0),
          'loss0_nat': jnp.float32(1.0), 'started': jnp.bool_(False)}


def mtard_loss(params, batch, keys, ctx):
  """MTARD (Zhao et al., ECCV 2022): module docstring."""
  x, y = batch['image'], batch['label']
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  student, stats = ctx.apply(params, x_adv, train=True)
  clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
  adv_term, nat_term = mtard_terms(ctx.teachers[ROBUST](x_adv).logits,
                                   ctx.teachers[NATURAL](x).logits,
                                   student.logits, clean.logits)
  means = (jnp.mean(adv_term), jnp.mean(nat_term))
  if ctx.axis_name is not None:  # one update, identical on every device
    means = jax.lax.pmean(means, ctx.axis_name)
  state = mtard_weights(ctx.state, *means, ctx.hp, ctx.epoch)
  w_nat = jax.lax.stop_gradient(state['w_nat'])
  loss = (1.0 - w_nat) * adv_term + w_nat * nat_term
  metrics = {'adv_accuracy': accuracy(student.logits, y),
             'adv_kl': means[0], 'nat_kl': means[1], 'w_nat': w_nat,
             'loss0_adv': state['loss0_adv'],
             'loss0_nat': state['loss0_nat']}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def mtard_update_state(state, metrics, ctx):
  """Stores the weights the step used (already identical across devices)."""
  del ctx
  return {'w_nat': metrics['w_nat'], 'loss0_adv': metrics['loss0_adv'],
          'loss0_nat': metrics['loss0_nat'],
          'started': jnp.ones_like(state['started'])}


def adaad_inner(teacher_adv, student_adv):
  """AdaAD's attack objective: KL(p_T(x') ‖ p_S(x')), T at the moving x'."""
  return _kl(teacher_adv, student_adv)


def adaad_loss(params, batch, keys, ctx):
  """AdaAD (Huang et al., CVPR 2023): module docstring."""
  x, y = batch['image'], batch['label']
  hp = ctx.hp
  alpha = hp.get('alpha', 1.0)
  teacher = ctx.teachers[ROBUST]
  logits_fn = ctx.logits_fn(params)
  # The teacher is re-evaluated at every step; x' gets its gradient too.
  x_adv = ctx.attack.pgd(lambda z: adaad_inner(teacher(z).logits,
                                               logits_fn(z)), x, keys, batch)
  student, stats = ctx.apply(params, x_adv, train=True)
  student_clean = teacher_clean = None
  if alpha < 1.0:
    clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
    student_clean, teacher_clean = clean.logits, teacher(x).logits
  scale = {'em': 1.0 / ctx.num_classes, 'bm': 1.0}[hp.get('reduction', 'em')]
  loss = adaad_outer(teacher(x_adv).logits, teacher_clean, student.logits,
                     student_clean, alpha=alpha, scale=scale)
  metrics = {'adv_accuracy': accuracy(student.logits, y)}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


ARD = Method('ard', ard_loss, teachers=(ROBUST,),
             doc='ARD: τ² KL to the teacher on clean x, train-mode attack.')
IAD = Method('iad', iad_loss, teachers=(ROBUST,),
             doc='IAD-I: ARD plus reliability-weighted introspection.')
RSLAD = Method('rslad', rslad_loss, teachers=(ROBUST,),
               doc='RSLAD: robust soft labels of the teacher on clean x.')
MTARD = Method('mtard', mtard_loss, teachers=(ROBUST, NATURAL),
               init_state=mtard_init_state,
               update_state=mtard_update_state,
               doc='MTARD: adversarial and natural teachers, adaptive weights.')
ADAAD = Method('adaad', adaad_loss, teachers=(ROBUST,),
               doc='AdaAD: the attack maximises the teacher-student KL.')
