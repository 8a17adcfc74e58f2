r"""SmaraAD and SmaraAD++ (Yin et al., CVPR 2024): slack matching with a
soft-rank Spearman correlation and CAM attribution-region alignment.

Notation: S the student, T the frozen robust teacher (eval BatchNorm,
stopped parameters), p = softmax, x' the adversarial example,
L_sm(x) = −ρ_γ(p_S(x), p_T(x)) (`losses.spearman`), L_align(x) the MSE of
the normalised, resized CAMs of class y (`losses.cam`).

* **Inner maximisation** (Eq. 8, Table 1): PGD maximising, per example,
  Σ_c KL(p_T(x') ‖ p_S(x')) + L_align(x') (the `bm` KL), init N, the student
  in eval mode. The teacher is re-evaluated at every step, and its logits
  pass their input gradient on, as in AdaAD; its CAM is a constant
  (`stop_gradient`, as pytorch-grad-cam's NumPy maps are).
* **SmaraAD outer** (Eq. 9), per example then the batch mean:
  L = c + (1 − α)(L_sm(x) + L_align(x)) + α (L_sm(x') + L_align(x')),
  c = 2, α = 1 (the paper's setting, which drops the clean terms and the
  clean forward pass). The constant c shifts the loss, not the gradient.
* **SmaraAD++ outer** (Eq. 10), per example then the mean:
  a·w·L_9 + (1 − a)·(−ρ_γ(p_S(x), p_S(x')) + CE(S(x), y)), with
  a = p_T(x')_y^λ (λ = 0.1) and w = clamp(1 − H(p_T(x'))/log C, 0, 1), both
  constants. Two choices METHODS.md makes where the paper is unclear: the
  self-learning term is written ρ(S(x)‖S(x')) in Eq. 10, but minimising ρ
  would decorrelate the two predictions, so the term is −ρ like L_sm; and
  neither of its sides is detached (as IAD's introspection term).

The CAM class is the label y; `cam_class='teacher_pred'` uses the teacher's
prediction on the same input for both maps instead. Hyperparameters
(`config.method`): `gamma`, `c`, `alpha`, `lam`, `cam_class`.
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard.losses import cam as cam_lib
from jard.losses import spearman
from jard.methods.base import accuracy
from jard.methods.base import Method

ROBUST = 'robust'
CAM_CLASSES = ('label', 'teacher_pred')


def _kl(target_logits, logits):
  return losses.distillation_kl(target_logits, logits, reduction='none')


def smaraad_inner(teacher_logits, teacher_cam, student_logits, student_cam):
  """The attack objective per example: Σ KL(p_T ‖ p_S) + L_align `[B]`."""
  return (_kl(teacher_logits, student_logits)
          + cam_lib.cam_alignment(student_cam, teacher_cam))


def smaraad_terms(teacher_logits, teacher_cam, student_logits, student_cam, *,
                  gamma):
  """L_sm + L_align on one input, per example `[B]`."""
  return (spearman.slack_matching_loss(jax.nn.softmax(student_logits),
                                       jax.nn.softmax(teacher_logits),
                                       gamma=gamma)
          + cam_lib.cam_alignment(student_cam, teacher_cam))


def smaraad_outer(adv_terms, clean_terms, *, c, alpha):
  """Eq. 9 per example: c + (1 − α)·clean_terms + α·adv_terms `[B]`.

  `clean_terms` may be None when α = 1.
  """
  loss = c + alpha * adv_terms
  if alpha < 1.0:
    loss = loss + (1.0 - alpha) * clean_terms
  return loss


def teacher_reliability(teacher_adv_logits, labels, *, lam):
  """SmaraAD++'s constants per example: a = p_T(x')_y^λ and the entropy
  weight w = clamp(1 − H(p_T(x'))/log C, 0, 1); both `[B]`, stopped."""
  teacher_adv_logits = jax.lax.stop_gradient(teacher_adv_logits)
  probs = jax.nn.softmax(teacher_adv_logits)
  log_probs = jax.nn.log_softmax(teacher_adv_logits)
  confidence = jnp.take_along_axis(probs, labels[:, None], -1)[:, 0] ** lam
  entropy = -jnp.sum(probs * log_probs, axis=-1)
  weight = jnp.clip(1.0 - entropy / jnp.log(probs.shape[-1]), 0.0, 1.0)
  return confidence, weight


def smaraad_pp_outer(eq9, student_clean, student_adv, labels, confidence,
                     weight, *, gamma):
  """Eq. 10 per example: a·w·L_9 + (1 − a)(−ρ(p_S(x), p_S(x')) + CE) `[B]`."""
  self_learning = (
      spearman.slack_matching_loss(jax.nn.softmax(student_clean),
                                   jax.nn.softmax(student_adv), gamma=gamma,
                                   stop_target=False)
      + losses.cross_entropy(student_clean, labels))
  return confidence * weight * eq9 + (1.0 - confidence) * self_learning


def _cam_classes(hp, labels, teacher_logits):
  mode = hp.get('cam_class', 'label')
  if mode not in CAM_CLASSES:
    raise ValueError(f'config.method.cam_class={mode!r}: choose one of '
                     f'{CAM_CLASSES}.')
  if mode == 'teacher_pred':
    return jnp.argmax(jax.lax.stop_gradient(teacher_logits), -1)
  return labels


def _teacher_view(teacher, x, hp, labels):
  """Teacher logits and normalised CAM (constant) on x."""
  outputs = teacher(x)
  classes = _cam_classes(hp, labels, outputs.logits)
  kernel = cam_lib.head_kernel(teacher.variables['params'], who='the teacher')
  cam = cam_lib.normalized_cam(jax.lax.stop_gradient(outputs.features),
                               kernel, classes)
  return outputs.logits, jax.lax.stop_gradient(cam), classes


def _student_cam(params, outputs, classes):
  kernel = cam_lib.head_kernel(params, who='the student')
  return cam_lib.normalized_cam(outputs.features, kernel, classes)


def _adversarial(params, x, y, keys, batch, ctx):
  """x' of Eq. 8: PGD on KL + L_align, student eval, teacher re-evaluated."""
  params = jax.lax.stop_gradient(params)
  teacher = ctx.teachers[ROBUST]

  def objective(z):
    teacher_logits, teacher_cam, classes = _teacher_view(teacher, z, ctx.hp, y)
    student, _ = ctx.apply(params, z, train=False)
    return smaraad_inner(teacher_logits, teacher_cam, student.logits,
                         _student_cam(params, student, classes))

  return ctx.attack.pgd(objective, x, keys, batch)


def _loss(params, batch, keys, ctx, *, plus):
  x, y = batch['image'], batch['label']
  hp = ctx.hp
  gamma, alpha = hp.get('gamma', 1000.0), hp.get('alpha', 1.0)
  teacher = ctx.teachers[ROBUST]
  x_adv = _adversarial(params, x, y, keys, batch, ctx)
  t_adv, t_cam_adv, classes_adv = _teacher_view(teacher, x_adv, hp, y)
  student, stats = ctx.apply(params, x_adv, train=True)
  s_cam_adv = _student_cam(params, student, classes_adv)
  adv_terms = smaraad_terms(t_adv, t_cam_adv, student.logits, s_cam_adv,
                            gamma=gamma)
  clean = clean_terms = None
  if alpha < 1.0 or plus:  # the clean forward pass is needed
    clean, stats = ctx.apply(params, x, train=True, batch_stats=stats)
  if alpha < 1.0:
    t_clean, t_cam_clean, classes = _teacher_view(teacher, x, hp, y)
    clean_terms = smaraad_terms(t_clean, t_cam_clean, clean.logits,
                                _student_cam(params, clean, classes),
                                gamma=gamma)
  loss = smaraad_outer(adv_terms, clean_terms, c=hp.get('c', 2.0),
                       alpha=alpha)
  metrics = {
      'adv_accuracy': accuracy(student.logits, y),
      'adv_spearman': jnp.mean(spearman.hard_spearman(
          jax.nn.softmax(student.logits), jax.nn.softmax(t_adv))),
      'adv_cam_mse': jnp.mean(cam_lib.cam_alignment(s_cam_adv, t_cam_adv)),
  }
  if plus:
    confidence, weight = teacher_reliability(t_adv, y, lam=hp.get('lam', 0.1))
    loss = smaraad_pp_outer(loss, clean.logits, student.logits, y,
                            confidence, weight, gamma=gamma)
    metrics.update(teacher_confidence=jnp.mean(confidence),
                   entropy_weight=jnp.mean(weight))
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics}


def smaraad_loss(params, batch, keys, ctx):
  """SmaraAD (Eq. 9): module docstring."""
  return _loss(params, batch, keys, ctx, plus=False)


def smaraad_pp_loss(params, batch, keys, ctx):
  """SmaraAD++ (Eq. 10): module docstring."""
  return _loss(params, batch, keys, ctx, plus=True)


SMARAAD = Method('smaraad', smaraad_loss, teachers=(ROBUST,),
                 doc='SmaraAD: soft-rank Spearman slack matching + CAM '
                 'alignment (Eq. 9).')
SMARAAD_PP = Method('smaraad_pp', smaraad_pp_loss, teachers=(ROBUST,),
                    doc='SmaraAD++: teacher-confidence and entropy weighted '
                    'Eq. 9 plus student self-learning (Eq. 10).')
