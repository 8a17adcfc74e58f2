r"""CIARD (Lu et al., ICCV 2025): cyclic iterative adversarial robustness
distillation, with a push loss and continuous retraining of the robust
teacher, all inside the one compiled step.

Default = the released code with its per-batch decay bug fixed (METHODS.md,
`seed_methods_facts.md` §2). Per step, with KLe(p ‖ q) = (1/C) Σ_c p_c
(log(p_c + 1e-5) − log q_c) per example (`em` after the batch mean):

1. x' = PGD-10 on CE(S(x'), y), student in eval mode, init N.
2. The robust teacher T_a runs in *train-mode* BatchNorm (`teacher_bn`),
   on x (output unused; it moves the running statistics, as the released
   code does) and on x'; the natural teacher T_n in eval mode on x and x'.
   KL_adv = KLe(softmax(T_a(x')/τ_a) ‖ softmax(S(x'))),
   KL_nat = KLe(softmax(T_n(x)/τ_n) ‖ softmax(S(x))), no τ² factor.
3. Temperatures (start 1, clipped to [1, 10]) with H_k = mean over B·C of
   p log(p + 1e-5): τ_a −= r·sign(H_a/H_n − 1), τ_n −= r·sign(H_n/H_a − 1),
   effective from the next step; r = 0.001, ×0.1 at each lr-decay epoch
   (`per_batch_decay_bug=True` multiplies at every step of those epochs, so
   r underflows to 0 within the first and the temperatures freeze).
4. Push: on the examples where T_n(x') is wrong (argmax ≠ y), KL3 =
   KLe(softmax(T_n(x')) ‖ softmax(S(x')/5)) averaged over those examples
   only (0 if none), and w3 = 10^(min(⌊log10 KL_adv⌋, ⌊log10 KL_nat⌋) −
   ⌊log10 KL3⌋), a constant. `push='subtract'` (released):
   L = KL_adv + KL_nat − w3·KL3; `'bounded'`: + w3·max(0, m − KL3);
   `'off'`. `weights='mtard'` weights the two KLs with MTARD's adaptive
   weights instead of 1:1.
5. Teacher retraining: from `retrain_from_epoch` on (50: the released
   `epoch > 50` with epochs counted from 1), T_a takes one SGD step
   (momentum 0.1, wd 2e-4, coupled as PyTorch) on CE(T_a(x'), y) with
   lr_T(e) = 1e-4·(0.5 + 0.5 cos(π(e−50)/250))·exp(−0.01(e−50)²/250²).
   Its params, BatchNorm statistics and momentum are the method state.

The student loss never reaches the teacher (its logits are stopped) and the
teacher loss never reaches the student (x' is stopped). Released epochs
count from 1; jard's from 0, so the schedules are evaluated at e = epoch + 1.
Across devices every batch-level quantity (H, the KLs of w3, KL3, the
teacher's gradient and BatchNorm statistics) is global, so 1 and 8 devices
agree.
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard import schedules
from jard.methods import distillation
from jard.methods.base import accuracy
from jard.methods.base import Method

ROBUST = 'robust'
NATURAL = 'natural'
PUSH = ('subtract', 'bounded', 'off')
WEIGHTS = ('fixed', 'mtard')
TEACHER_BN = ('train', 'eval')
LOG_EPS = 1e-5


# --- Schedules (formula epoch e, counted from 1 as in the released code) ---


def cosine_gauss(e, *, base, start, length):
  """`base` before `start`, then base·(0.5 + 0.5 cos(π(e−s)/L))·exp(−0.01
  (e−s)²/L²)` (0 at e = s + L)."""
  t = jnp.clip(jnp.asarray(e, jnp.float32) - start, 0.0, length)
  return base * (0.5 + 0.5 * jnp.cos(jnp.pi * t / length)) * jnp.exp(
      -0.01 * t ** 2 / length ** 2)


def student_lr(e, base=0.1):
  """0.1 until epoch 150, then the cosine×Gaussian decay to 0 at 300."""
  return cosine_gauss(e, base=base, start=150.0, length=150.0)


def teacher_lr(e, base=1e-4, start=50.0, length=250.0):
  """0 before epoch `start`, then 1e-4·cosine×Gaussian, 0 at 300."""
  return jnp.where(jnp.asarray(e) < start, 0.0,
                   cosine_gauss(e, base=base, start=start, length=length))


def _student_schedule(epoch, *, base_lr, cfg):
  del cfg
  return student_lr(epoch + 1, base_lr)


schedules.register_schedule('ciard', _student_schedule)


def temperature_rate(step, steps_per_epoch, *, boundaries=(215, 260, 285),
                     per_batch_decay_bug=False, base=1e-3):
  """The temperatures' step size: ×0.1 once at each boundary epoch (1-based,
  as the released loop), or, reproducing the bug, ×0.1 at every step of
  those epochs (it underflows to exactly 0 within the first)."""
  e = step // steps_per_epoch + 1
  bounds = jnp.asarray(tuple(boundaries) or (1 << 30,))
  if not per_batch_decay_bug:
    return base * 0.1 ** jnp.sum(e >= bounds)
  # Steps taken so far inside boundary epochs, this one included.
  first = (bounds - 1) * steps_per_epoch
  count = jnp.sum(jnp.clip(step - first + 1, 0, steps_per_epoch))
  return jnp.where(count > 40, 0.0, base * 0.1 ** count.astype(jnp.float32))


# --- Loss terms (per example unless stated) ----------------------------------


def kl_em(target_probs, student_logits, student_temperature=1.0):
  """KLe per example `[B]`: (1/C) Σ_c p (log(p + 1e-5) − log q)."""
  log_q = jax.nn.log_softmax(student_logits / student_temperature)
  return jnp.mean(target_probs * (jnp.log(target_probs + LOG_EPS) - log_q),
                  axis=-1)


def neg_entropy(probs):
  """H = mean over B·C of p log(p + 1e-5) (a scalar, ≤ 0)."""
  return jnp.mean(probs * jnp.log(probs + LOG_EPS))


def update_temperatures(t_adv, t_nat, h_adv, h_nat, rate):
  """τ_a −= r·sign(H_a/H_n − 1), τ_n −= r·sign(H_n/H_a − 1), in [1, 10]."""
  new_adv = t_adv - rate * jnp.sign(h_adv / h_nat - 1.0)
  new_nat = t_nat - rate * jnp.sign(h_nat / h_adv - 1.0)
  return jnp.clip(new_adv, 1.0, 10.0), jnp.clip(new_nat, 1.0, 10.0)


def push_mask(natural_adv_logits, labels):
  """Examples whose natural-teacher prediction on x' is wrong `[B]`."""
  return jnp.argmax(natural_adv_logits, -1) != labels


def magnitude_weight(kl_adv, kl_nat, kl_push):
  """w3 = 10^(min(⌊log10 KL_adv⌋, ⌊log10 KL_nat⌋) − ⌊log10 KL3⌋); 0 when
  KL3 is 0 (nothing selected). Scalars, stopped."""
  kl_adv, kl_nat, kl_push = jax.lax.stop_gradient((kl_adv, kl_nat, kl_push))
  safe = jnp.where(kl_push > 0, kl_push, 1.0)
  exponent = (jnp.minimum(jnp.floor(jnp.log10(kl_adv)),
                          jnp.floor(jnp.log10(kl_nat)))
              - jnp.floor(jnp.log10(safe)))
  return jnp.where(kl_push > 0, 10.0 ** exponent, 0.0)


def _global_mean(value, axis_name):
  return value if axis_name is None else jax.lax.pmean(value, axis_name)


def _global_sum(value, axis_name):
  return value if axis_name is None else jax.lax.psum(value, axis_name)


# --- The robust teacher as method state --------------------------------------


def ciard_init_state(hp, num_classes, teachers):
  """Temperatures, the trainable copy of the robust teacher (params,
  batch_stats, momentum) and, for `weights='mtard'`, MTARD's weights."""
  del num_classes
  variables = teachers[ROBUST].variables
  state = {'t_adv': jnp.float32(1.0), 't_nat': jnp.float32(1.0),
           'teacher': {'params': variables['params'],
                       'batch_stats': variables.get('batch_stats', {})},
           'teacher_momentum': jax.tree.map(jnp.zeros_like,
                                            variables['params'])}
  if hp.get('weights', 'fixed') == 'mtard':
    state['mtard'] = distillation.mtard_init_state(hp, None)
  return state


def _teacher_forward(ctx, variables, x, train):
  """The robust teacher with its own variables; train mode moves its
  BatchNorm statistics (synchronised over devices)."""
  model = ctx.teachers[ROBUST].model
  if not train:
    return model.apply(variables, x, train=False), variables['batch_stats']
  model = model.clone(bn_axis_name=ctx.axis_name)
  out, updates = model.apply(variables, x, train=True,
                             mutable=['batch_stats'])
  return out, updates['batch_stats']


def teacher_sgd(params, momentum, grads, lr, *, beta=0.1, weight_decay=2e-4):
  """PyTorch SGD with coupled weight decay: buf = β·buf + (g + wd·p),
  p −= lr·buf. Returns `(params, momentum)`."""
  grads = jax.tree.map(lambda g, p: g + weight_decay * p, grads, params)
  momentum = jax.tree.map(lambda m, g: beta * m + g, momentum, grads)
  params = jax.tree.map(lambda p, m: p - lr * m, params, momentum)
  return params, momentum


def ciard_loss(params, batch, keys, ctx):
  """CIARD: module docstring."""
  x, y = batch['image'], batch['label']
  hp, state, axis = ctx.hp, ctx.state, ctx.axis_name
  teacher_train = hp.get('teacher_bn', 'train') == 'train'
  teacher = dict(state['teacher'])
  natural = ctx.teachers[NATURAL]

  # Clean passes (the released order): student, natural teacher, robust
  # teacher (unused output; in train mode it moves the statistics).
  clean, stats = ctx.apply(params, x, train=True)
  n_nat = natural(x).logits
  _, teacher['batch_stats'] = _teacher_forward(ctx, teacher, x, teacher_train)

  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  adv, stats = ctx.apply(params, x_adv, train=True, batch_stats=stats)

  # The robust teacher on x': its logits for the student (stopped) and its
  # own CE gradient, from one forward pass.
  def teacher_ce(teacher_params):
    out, new_stats = _teacher_forward(
        ctx, {'params': teacher_params,
              'batch_stats': teacher['batch_stats']}, x_adv, teacher_train)
    return jnp.mean(losses.cross_entropy(out.logits, y)), (out.logits,
                                                           new_stats)
  (teacher_loss, (r_adv, new_stats)), t_grads = jax.value_and_grad(
      teacher_ce, has_aux=True)(jax.lax.stop_gradient(teacher['params']))
  r_adv = jax.lax.stop_gradient(r_adv)
  n_adv = natural(x_adv).logits

  p_adv = jax.nn.softmax(r_adv / state['t_adv'])
  p_nat = jax.nn.softmax(n_nat / state['t_nat'])
  kl_adv = kl_em(p_adv, adv.logits)
  kl_nat = kl_em(p_nat, clean.logits)
  mean_adv = _global_mean(jnp.mean(kl_adv), axis)
  mean_nat = _global_mean(jnp.mean(kl_nat), axis)

  # Push, over the selected examples of the global batch.
  mask = push_mask(n_adv, y).astype(jnp.float32)
  kl3 = kl_em(jax.nn.softmax(n_adv), adv.logits, student_temperature=5.0)
  selected = _global_sum(jnp.sum(mask), axis)
  global_batch = _global_sum(jnp.float32(y.shape[0]), axis)
  kl3_mean = _global_sum(jnp.sum(mask * kl3), axis) / jnp.maximum(selected, 1)
  w3 = magnitude_weight(mean_adv, mean_nat, kl3_mean)
  # Per-example share of the selected-examples mean: its batch mean is KL3.
  push_share = mask * kl3 * global_batch / jnp.maximum(selected, 1.0)
  mode = hp.get('push', 'subtract')
  if mode == 'subtract':
    push = -w3 * push_share
  elif mode == 'bounded':
    margin = hp.get('push_margin', 1.0)
    # w3·max(0, m − KL3): per example m − share, whose batch mean is m − KL3.
    active = jax.lax.stop_gradient(kl3_mean < margin)
    push = active * w3 * (margin - push_share)
  else:
    push = jnp.zeros_like(kl3)

  new_state = dict(state)
  if hp.get('weights', 'fixed') == 'mtard':
    new_state['mtard'] = distillation.mtard_weights(
        state['mtard'], mean_adv, mean_nat, hp, ctx.epoch)
    w_nat = jax.lax.stop_gradient(new_state['mtard']['w_nat'])
    loss = (1.0 - w_nat) * kl_adv + w_nat * kl_nat + push
  else:
    loss = kl_adv + kl_nat + push

  # Temperatures for the next step, from this step's global entropies.
  h_adv = _global_mean(neg_entropy(p_adv), axis)
  h_nat = _global_mean(neg_entropy(p_nat), axis)
  rate = temperature_rate(
      ctx.step, ctx.steps_per_epoch, boundaries=tuple(hp.get('rate_boundaries',
                                             (215, 260, 285))),
      per_batch_decay_bug=hp.get('per_batch_decay_bug', False))
  new_state['t_adv'], new_state['t_nat'] = update_temperatures(
      state['t_adv'], state['t_nat'], h_adv, h_nat, rate)

  # Teacher step (lr 0 before `retrain_from_epoch`: params and momentum
  # stay; the statistics move in train mode regardless, as released).
  t_grads = _global_mean(t_grads, axis)
  e = ctx.epoch + 1
  start = hp.get('retrain_from_epoch', 50)
  lr_t = jnp.where(ctx.epoch >= start,
                   teacher_lr(e, base=hp.get('teacher_lr', 1e-4),
                              start=float(start)), 0.0)
  retrain = (ctx.epoch >= start) & hp.get('retrain', True)
  t_params, t_momentum = teacher_sgd(
      teacher['params'], state['teacher_momentum'], t_grads, lr_t,
      beta=hp.get('teacher_momentum', 0.1),
      weight_decay=hp.get('teacher_weight_decay', 2e-4))
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(retrain, n, o), new, old)
  new_state['teacher'] = {
      'params': keep(t_params, teacher['params']),
      'batch_stats': _global_mean(new_stats, axis) if teacher_train
                     else teacher['batch_stats']}
  new_state['teacher_momentum'] = keep(t_momentum, state['teacher_momentum'])

  metrics = {'adv_accuracy': accuracy(adv.logits, y),
             'clean_accuracy': accuracy(clean.logits, y),
             'kl_adv': mean_adv, 'kl_nat': mean_nat, 'kl_push': kl3_mean,
             'push_weight': w3, 'push_fraction': selected / global_batch,
             't_adv': state['t_adv'], 't_nat': state['t_nat'],
             'teacher_ce': _global_mean(teacher_loss, axis),
             'teacher_lr': lr_t,
             'teacher_accuracy': accuracy(r_adv, y)}
  return jnp.mean(loss), {'batch_stats': stats, 'metrics': metrics,
                          'method_state': jax.lax.stop_gradient(new_state)}


CIARD = Method('ciard', ciard_loss, teachers=(ROBUST, NATURAL),
               init_state=ciard_init_state, state_from_teachers=True,
               doc='CIARD: two teachers, dynamic temperatures, push loss, '
               'the robust teacher retrained every step.')
