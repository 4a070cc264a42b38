"""optax optimizer and learning-rate schedule from `config.optimizer`.

Keys: name (sgd, momentum, nesterov, adam, adamw, adagrad, rmsprop), learning_rate, schedule
(constant, cosine, linear), warmup_steps, end_learning_rate_factor, momentum, b1, b2, eps,
weight_decay, grad_clip_norm (0 = off), grad_accum_steps (1 = off).
"""
from __future__ import annotations

import ml_collections
import optax

from maasjax.config import ConfigError, check_name

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'adagrad', 'rmsprop')
SCHEDULES = ('constant', 'cosine', 'linear')


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  lr = float(opt.learning_rate)
  if lr <= 0:
    raise ConfigError(f'config.optimizer.learning_rate={lr}: expected a positive number')
  name = opt.get('schedule', 'constant')
  check_name('schedule', name, SCHEDULES)
  warmup = int(opt.get('warmup_steps', 0))
  # With gradient accumulation the schedule advances once per optimizer update.
  updates = max(1, num_train_steps // max(1, int(opt.get('grad_accum_steps', 1))))
  if warmup < 0:
    raise ConfigError(f'config.optimizer.warmup_steps={warmup}: expected an integer >= 0')
  warmup = min(warmup, updates)  # a short run (e.g. a smoke test) warms up over all of it
  end = lr * float(opt.get('end_learning_rate_factor', 0.0))
  decay_steps = max(1, updates - warmup)
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
  else:
    main = optax.linear_schedule(lr, end, decay_steps)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  opt = config.optimizer
  name = opt.name
  check_name('optimizer', name, OPTIMIZERS)
  lr = make_schedule(opt, int(config.num_train_steps))
  wd = float(opt.get('weight_decay', 0.0))
  momentum = float(opt.get('momentum', 0.9))
  b1, b2, eps = float(opt.get('b1', 0.9)), float(opt.get('b2', 0.999)), float(opt.get('eps', 1e-8))
  if name == 'sgd':
    core = optax.sgd(lr)
  elif name in ('momentum', 'nesterov'):
    core = optax.sgd(lr, momentum=momentum, nesterov=(name == 'nesterov' or bool(opt.get('nesterov', False))))
  elif name == 'adam':
    core = optax.adam(lr, b1=b1, b2=b2, eps=eps)
  elif name == 'adamw':
    core = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
  elif name == 'adagrad':
    core = optax.adagrad(lr, eps=eps)
  else:
    core = optax.rmsprop(lr, decay=float(opt.get('decay', 0.9)), eps=eps, momentum=momentum or None)
  chain = []
  clip = float(opt.get('grad_clip_norm', 0.0))
  if clip < 0:
    raise ConfigError(f'config.optimizer.grad_clip_norm={clip}: expected >= 0 (0 turns clipping off)')
  if clip:
    chain.append(optax.clip_by_global_norm(clip))
  if wd and name != 'adamw':  # L2-style decoupled decay for the others, adamw has its own.
    chain.append(optax.add_decayed_weights(wd))
  if wd < 0:
    raise ConfigError(f'config.optimizer.weight_decay={wd}: expected >= 0')
  chain.append(core)
  tx = optax.chain(*chain) if len(chain) > 1 else core
  accum = int(opt.get('grad_accum_steps', 1))
  if accum < 1:
    raise ConfigError(f'config.optimizer.grad_accum_steps={accum}: expected an integer >= 1')
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx
