"""Teacher-training baselines: natural, PGD-AT, TRADES and MART.

Each follows its reference recipe (METHODS.md, "Teacher training"); the
attack hyperparameters (ε, step, steps, init) come from `config.attack.train`,
set per method in `configs/`. A model with ADER's attention branch
(`config.model.attention_stage`) also trains its auxiliary logits with CE on
the inputs of the main CE (`base.branch_ce`), so jard can train teachers with
a branch.
"""

import jax
import jax.numpy as jnp

from jard import losses
from jard.methods.base import accuracy
from jard.methods.base import branch_ce
from jard.methods.base import Method


def natural_loss(params, batch, keys, ctx):
  """CE(S(x), y) on clean inputs, BatchNorm in train mode."""
  del keys
  outputs, batch_stats = ctx.apply(params, batch['image'], train=True)
  loss = (jnp.mean(losses.cross_entropy(outputs.logits, batch['label']))
          + branch_ce(outputs, batch['label'], ctx.hp))
  metrics = {'clean_accuracy': accuracy(outputs.logits, batch['label'])}
  return loss, {'batch_stats': batch_stats, 'metrics': metrics}


def pgd_at_loss(params, batch, keys, ctx):
  """PGD-AT (Madry et al., ICLR 2018): CE(S(x'), y).

  Inner: PGD on CE with the student in eval mode (running statistics, as the
  PyTorch baselines in the AD papers do); init from `config.attack.train`.
  """
  x, y = batch['image'], batch['label']
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  outputs, batch_stats = ctx.apply(params, x_adv, train=True)
  loss = (jnp.mean(losses.cross_entropy(outputs.logits, y))
          + branch_ce(outputs, y, ctx.hp))
  metrics = {'adv_accuracy': accuracy(outputs.logits, y)}
  return loss, {'batch_stats': batch_stats, 'metrics': metrics}


def trades_loss(params, batch, keys, ctx):
  """TRADES (Zhang et al., ICML 2019): CE(S(x), y) + β·KL(p(x) ‖ p(x')), bm.

  Inner: maximise Σ KL(p_S(x) ‖ p_S(x')) in eval mode, with p_S(x) fixed;
  init N, 10 × 0.007 at ε = 0.031 in the original. Outer: the clean target
  is *not* detached. BatchNorm running statistics are updated in the
  reference's order (x, x', x).
  """
  x, y = batch['image'], batch['label']
  beta = ctx.hp.get('beta', 6.0)
  logits_fn = ctx.logits_fn(params)
  clean_probs = jax.nn.softmax(logits_fn(x))
  x_adv = ctx.attack.pgd(
      lambda z: losses.kl_divergence(clean_probs,
                                     jax.nn.log_softmax(logits_fn(z))),
      x, keys, batch)
  clean, batch_stats = ctx.apply(params, x, train=True)
  adv, batch_stats = ctx.apply(params, x_adv, train=True,
                               batch_stats=batch_stats)
  # The reference runs a third train-mode pass on x (the KL target); its
  # outputs equal `clean`, only the running statistics move again.
  _, batch_stats = ctx.apply(jax.lax.stop_gradient(params), x, train=True,
                             batch_stats=batch_stats)
  loss = (jnp.mean(losses.trades_loss(clean.logits, adv.logits, y,
                                      beta=beta))
          + branch_ce(clean, y, ctx.hp))
  metrics = {'clean_accuracy': accuracy(clean.logits, y),
             'adv_accuracy': accuracy(adv.logits, y)}
  return loss, {'batch_stats': batch_stats, 'metrics': metrics}


def mart_loss(params, batch, keys, ctx):
  """MART (Wang et al., ICLR 2020), per-example loss averaged over the batch.

  Inner: PGD on CE in eval mode, init N, 10 × 0.007 at ε = 0.031. Outer:
  `losses.mart_loss` with β from `config.method.beta` (5 for ResNet-18, 6 for
  WRN in the official code). Train-mode passes in the order x, x'.
  """
  x, y = batch['image'], batch['label']
  beta = ctx.hp.get('beta', 6.0)
  logits_fn = ctx.logits_fn(params)
  x_adv = ctx.attack.pgd(lambda z: losses.cross_entropy(logits_fn(z), y), x,
                         keys, batch)
  clean, batch_stats = ctx.apply(params, x, train=True)
  adv, batch_stats = ctx.apply(params, x_adv, train=True,
                               batch_stats=batch_stats)
  loss = (jnp.mean(losses.mart_loss(clean.logits, adv.logits, y, beta=beta))
          + branch_ce(adv, y, ctx.hp))
  metrics = {'clean_accuracy': accuracy(clean.logits, y),
             'adv_accuracy': accuracy(adv.logits, y)}
  return loss, {'batch_stats': batch_stats, 'metrics': metrics}


NATURAL = Method('natural', natural_loss, doc='Cross-entropy on clean inputs.')
PGD_AT = Method('pgd_at', pgd_at_loss, doc='Madry PGD adversarial training.')
TRADES = Method('trades', trades_loss, doc='TRADES (Zhang et al. 2019).')
MART = Method('mart', mart_loss, doc='MART (Wang et al. 2020).')
