r"""PGD-10 AT, RSLAD and SmaraAD training steps written the usual PyTorch way.

Used only by `benchmarks/throughput.py`, to time the same work jard's
compiled steps do: the same attack (init, steps, step size, projection), the
same BatchNorm modes (the student in eval mode while attacked, train mode
for the update), the same losses, and SGD with momentum and coupled weight
decay. Eager autograd, one Python iteration per attack step, as the AD
repositories write it.

* `pgd_at_step`: CE(S(x'), y) on PGD on CE.
* `rslad_step`: PGD on Σ KL(p_T(x) ‖ p_S(x')), init N; outer
  (5/6 k(T(x), S(x')) + 1/6 k(T(x), S(x))) / 10, k the smoothed KL.
* `smaraad_step`: PGD on Σ KL(p_T(x') ‖ p_S(x')) + L_align(x') with the
  teacher re-evaluated on x' (its logits pass their input gradient on, its
  CAM is a constant); outer c − ρ_γ(p_S(x'), p_T(x')) + L_align(x').
* `pgd_eval`: PGD-20 robust accuracy on a batch (no update).

Radio inputs (`[B, 2, L]`, attack `budget='pnr'`) take L2 steps with
per-example budgets ε_i = ‖x_i‖·10^((PNR − SNR_i)/20) and no data bounds,
as `jard.attacks.radio`.
"""

import torch
from torch.nn import functional as F


def _budget(x, snr, attack):
  """ε and the step size, scalars or `[B, 1, ...]` per-example tensors."""
  if attack['budget'] != 'pnr':
    return attack['eps'], attack['step_size']
  norm = x.flatten(1).norm(dim=1)
  eps = norm * 10.0 ** ((attack['pnr'] - snr) / 20.0)
  eps = eps.view(-1, *([1] * (x.dim() - 1)))
  return eps, attack['relative_step'] * eps


def _project(x_adv, x, eps, norm, bounds):
  if norm == 'linf':
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
  else:
    delta = x_adv - x
    scale = (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(
        -1, *([1] * (x.dim() - 1)))).clamp(max=1.0)
    x_adv = x + delta * scale
  return x_adv.clamp(*bounds) if bounds else x_adv


def pgd(objective, x, attack, snr=None):
  """`objective(x_adv) -> scalar` maximised by `attack['steps']` steps."""
  eps, step_size = _budget(x, snr, attack)
  norm = 'l2' if attack['budget'] == 'pnr' else attack['norm']
  bounds = None if attack['budget'] == 'pnr' else (0.0, 1.0)
  if attack['init'] == 'N':
    x_adv = x + 0.001 * torch.randn_like(x)
  elif norm == 'linf':
    x_adv = (x + torch.empty_like(x).uniform_(-1, 1) * eps).clamp(*bounds)
  else:
    direction = torch.randn_like(x)
    direction /= direction.flatten(1).norm(dim=1).view(
        -1, *([1] * (x.dim() - 1)))
    x_adv = x + eps * direction * torch.rand(
        x.shape[0], *([1] * (x.dim() - 1))) ** (1.0 / x[0].numel())
  x_adv = x_adv.detach()
  for _ in range(attack['steps']):
    x_adv.requires_grad_(True)
    grad, = torch.autograd.grad(objective(x_adv), x_adv)
    if norm == 'linf':
      step = grad.sign()
    else:
      step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(
          -1, *([1] * (x.dim() - 1)))
    x_adv = _project(x_adv.detach() + step_size * step, x, eps, norm, bounds)
  return x_adv.detach()


def make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4):
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


def _update(model, optimizer, loss):
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  return loss.detach()


def pgd_at_step(model, optimizer, x, y, attack, snr=None, teacher=None):
  del teacher
  model.eval()
  x_adv = pgd(lambda z: F.cross_entropy(model(z)[0], y, reduction='sum'), x,
              attack, snr)
  model.train()
  return _update(model, optimizer, F.cross_entropy(model(x_adv)[0], y))


def _kl_sum(target_logits, logits):
  """Σ over batch and classes of KL(p_target ‖ p), `KLDivLoss(sum)`."""
  return F.kl_div(F.log_softmax(logits, 1), F.softmax(target_logits, 1),
                  reduction='sum')


def _smoothed_kl(target_logits, logits):
  b = F.softmax(target_logits, 1)
  return (-b * F.log_softmax(logits, 1) + b * torch.log(b + 1e-5)).sum(1)


def rslad_step(model, optimizer, x, y, attack, snr=None, teacher=None):
  del y
  with torch.no_grad():
    soft = teacher(x)[0]
  model.eval()
  x_adv = pgd(lambda z: _kl_sum(soft, model(z)[0]), x, attack, snr)
  model.train()
  adv_logits, clean_logits = model(x_adv)[0], model(x)[0]
  loss = (5 / 6 * _smoothed_kl(soft, adv_logits)
          + 1 / 6 * _smoothed_kl(soft, clean_logits)).mean() / 10
  return _update(model, optimizer, loss)


def _cam(features, head_weight, classes):
  """Normalised CAM `[B, H, W]` (ReLU, min-max, +1e-7) of NCHW features."""
  cam = torch.einsum('bkhw,bk->bhw', features, head_weight[classes])
  cam = F.relu(cam)
  cam = cam - cam.amin(dim=(1, 2), keepdim=True)
  return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)


def _align(student_cam, teacher_cam):
  size = (max(student_cam.shape[1], teacher_cam.shape[1]),
          max(student_cam.shape[2], teacher_cam.shape[2]))
  resize = lambda m: m if tuple(m.shape[1:]) == size else F.interpolate(
      m[:, None], size, mode='bilinear', align_corners=False)[:, 0]
  return ((resize(teacher_cam) - resize(student_cam)) ** 2).mean((1, 2))


def _soft_rank(values, gamma):
  return torch.sigmoid(gamma * (values[:, None, :] - values[:, :, None])).sum(-1)


def _spearman(u, v, gamma):
  n = u.shape[1]
  d = ((_soft_rank(u, gamma) - _soft_rank(v, gamma)) ** 2).sum(1)
  return 1 - 6 * d / (n * (n * n - 1))


def _head_weight(model):
  return (model.head if hasattr(model, 'head') else model.linear).weight


def smaraad_step(model, optimizer, x, y, attack, snr=None, teacher=None,
                 gamma=1000.0, c=2.0):
  teacher_weight = _head_weight(teacher).detach()

  def teacher_view(z):
    logits, features = teacher(z)
    return logits, _cam(features.detach(), teacher_weight, y)

  def objective(z):
    t_logits, t_cam = teacher_view(z)
    s_logits, s_features = model(z)
    s_cam = _cam(s_features, _head_weight(model), y)
    return _kl_sum(t_logits, s_logits) + _align(s_cam, t_cam).sum()

  model.eval()
  x_adv = pgd(objective, x, attack, snr)
  with torch.no_grad():
    t_logits, t_cam = teacher_view(x_adv)
  model.train()
  s_logits, s_features = model(x_adv)
  s_cam = _cam(s_features, _head_weight(model), y)
  loss = (c - _spearman(s_logits.softmax(1), t_logits.softmax(1), gamma)
          + _align(s_cam, t_cam)).mean()
  return _update(model, optimizer, loss)


STEPS = {'pgd_at': pgd_at_step, 'rslad': rslad_step,
         'smaraad': smaraad_step}


def pgd_eval(model, x, y, attack, snr=None):
  """Robust accuracy on one batch under PGD on CE (no update)."""
  model.eval()
  x_adv = pgd(lambda z: F.cross_entropy(model(z)[0], y, reduction='sum'), x,
              attack, snr)
  with torch.no_grad():
    return (model(x_adv)[0].argmax(1) == y).float().mean()
