"""optax optimizer and learning-rate schedule from `config.optimizer`.

Keys for every optimizer: name, learning_rate, schedule (constant, cosine, linear), warmup_steps,
end_learning_rate_factor, weight_decay, grad_clip_norm (0 = off), grad_accum_steps (1 = off). Each
optimizer reads only its own settings besides (OWN_SETTINGS): momentum and nesterov read `momentum`
(and momentum a `nesterov` flag); adam and adamw `b1, b2, eps`; adagrad `eps`; rmsprop `decay, eps,
rmsprop_momentum` (default 0: the base config's `momentum` is SGD's and does not leak into rmsprop).
Moving-average rates (momentum, b1, b2, decay, rmsprop_momentum) must lie in [0, 1).

`weight_decay` means two different things, as in the literature:
- adamw: decoupled weight decay (Loshchilov & Hutter), optax.adamw's own: params -= lr * wd * params,
  outside the adaptive scaling.
- sgd, momentum, nesterov, adam, adagrad, rmsprop: L2 regularisation, wd * params added to the gradient
  before the optimizer (optax.add_decayed_weights first in the chain). With adam this is *not* AdamW:
  the decay is rescaled by the second-moment estimate like any gradient.
"""
from __future__ import annotations

import ml_collections
import optax

from maasjax.config import ConfigError, check_name

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw', 'adagrad', 'rmsprop')
OWN_SETTINGS = {'sgd': (), 'momentum': ('momentum', 'nesterov'), 'nesterov': ('momentum',), 'adam': ('b1', 'b2', 'eps'),
                'adamw': ('b1', 'b2', 'eps'), 'adagrad': ('eps',), 'rmsprop': ('decay', 'eps', 'rmsprop_momentum')}
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


def _number(opt: ml_collections.ConfigDict, key: str, default: float, low: float = 0.0,
            below: float | None = None) -> float:
  """`config.optimizer.key` as a float in [low, below) (below None: no upper bound), or a ConfigError."""
  value = opt.get(key, default)
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low
      or (below is not None and value >= below)):
    allowed = f'a number >= {low:g}' if below is None else f'a number in [{low:g}, {below:g})'
    raise ConfigError(f'config.optimizer.{key}={value!r}: expected {allowed}')
  return float(value)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  opt = config.optimizer
  name = opt.name
  check_name('optimizer', name, OPTIMIZERS)
  # Every setting is validated before anything is built from it.
  wd = _number(opt, 'weight_decay', 0.0)
  clip = _number(opt, 'grad_clip_norm', 0.0)
  accum = opt.get('grad_accum_steps', 1)
  if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
    raise ConfigError(f'config.optimizer.grad_accum_steps={accum!r}: expected an integer >= 1')
  lr = make_schedule(opt, int(config.num_train_steps))
  eps = _number(opt, 'eps', 1e-8) if 'eps' in OWN_SETTINGS[name] else None
  if name == 'sgd':
    core = optax.sgd(lr)
  elif name in ('momentum', 'nesterov'):
    core = optax.sgd(lr, momentum=_number(opt, 'momentum', 0.9, below=1.0),
                     nesterov=(name == 'nesterov' or bool(opt.get('nesterov', False))))
  elif name in ('adam', 'adamw'):
    b1, b2 = _number(opt, 'b1', 0.9, below=1.0), _number(opt, 'b2', 0.999, below=1.0)
    core = (optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd) if name == 'adamw'
            else optax.adam(lr, b1=b1, b2=b2, eps=eps))
  elif name == 'adagrad':
    core = optax.adagrad(lr, eps=eps)
  else:
    momentum = _number(opt, 'rmsprop_momentum', 0.0, below=1.0)
    core = optax.rmsprop(lr, decay=_number(opt, 'decay', 0.9, below=1.0), eps=eps, momentum=momentum or None)
  chain = []
  if clip:
    chain.append(optax.clip_by_global_norm(clip))
  if wd and name != 'adamw':  # L2: wd * params joins the gradient (adamw decays decoupled, inside optax.adamw)
    chain.append(optax.add_decayed_weights(wd))
  chain.append(core)
  tx = optax.chain(*chain) if len(chain) > 1 else core
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx
