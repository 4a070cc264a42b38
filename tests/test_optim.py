"""Optimizers and schedules from config: every name trains, schedules have the right shape."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maasjax.config import ConfigError
from maasjax.optim import OPTIMIZERS, make_optimizer, make_schedule
from maasjax.defaults import base_config


def _config(**opt):
  c = base_config()
  c.num_train_steps = 100
  for k, v in opt.items():
    c.optimizer[k] = v
  return c


def _quadratic_descent(tx, steps=100):
  target = jnp.arange(4.0)
  params = {'w': jnp.zeros(4)}
  loss = lambda p: jnp.sum((p['w'] - target) ** 2)

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (final, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(params)
  return float(loss(params)), float(loss(final))


@pytest.mark.parametrize('name', OPTIMIZERS)
@pytest.mark.parametrize('schedule', ['constant', 'cosine', 'linear'])
def test_every_optimizer_and_schedule_descends(name, schedule):
  lr = {'sgd': 0.1, 'momentum': 0.05, 'nesterov': 0.05, 'adagrad': 0.5}.get(name, 0.05)
  tx = make_optimizer(_config(name=name, learning_rate=lr, schedule=schedule, warmup_steps=5,
                              weight_decay=0.0))
  first, last = _quadratic_descent(tx)
  assert last < 0.2 * first


def test_warmup_then_cosine_values():
  sched = make_schedule(_config(learning_rate=1.0, schedule='cosine', warmup_steps=10).optimizer, 110)
  assert float(sched(0)) == 0.0
  assert abs(float(sched(5)) - 0.5) < 1e-6
  assert abs(float(sched(10)) - 1.0) < 1e-6
  assert abs(float(sched(60)) - 0.5) < 1e-6  # half way through the cosine
  assert float(sched(110)) < 1e-6


def test_clipping_bounds_the_update():
  tx = make_optimizer(_config(name='sgd', learning_rate=1.0, schedule='constant', warmup_steps=0,
                              grad_clip_norm=0.5, weight_decay=0.0))
  params = {'w': jnp.zeros(3)}
  updates, _ = tx.update({'w': jnp.array([30.0, 40.0, 0.0])}, tx.init(params), params)
  assert abs(float(optax.global_norm(updates)) - 0.5) < 1e-6


def test_gradient_accumulation_equals_one_big_batch():
  # Two micro-batch gradients accumulated == one step on their mean (what a 2x batch gives).
  c = _config(name='sgd', learning_rate=0.1, schedule='constant', warmup_steps=0, weight_decay=0.0,
              grad_accum_steps=2)
  tx_acc = make_optimizer(c)
  c.optimizer.grad_accum_steps = 1
  tx_one = make_optimizer(c)
  params = {'w': jnp.ones(3)}
  g1, g2 = {'w': jnp.array([1.0, 2.0, 3.0])}, {'w': jnp.array([3.0, 0.0, -1.0])}
  state = tx_acc.init(params)
  u1, state = tx_acc.update(g1, state, params)
  p1 = optax.apply_updates(params, u1)
  np.testing.assert_array_equal(p1['w'], params['w'])  # no update until k micro-steps
  u2, state = tx_acc.update(g2, state, p1)
  p_acc = optax.apply_updates(p1, u2)
  u, _ = tx_one.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), tx_one.init(params), params)
  np.testing.assert_allclose(p_acc['w'], optax.apply_updates(params, u)['w'], rtol=1e-6)


@pytest.mark.parametrize('opt,match', [
    ({'name': 'lamb'}, "unknown optimizer 'lamb'.*known optimizers: adagrad, adam, adamw"),
    ({'schedule': 'step'}, "unknown schedule 'step'"),
    ({'learning_rate': -1.0}, 'learning_rate=-1.0: expected a positive number'),
    ({'warmup_steps': -1}, 'warmup_steps=-1'),
    ({'grad_accum_steps': 0}, 'grad_accum_steps=0'),
    ({'grad_clip_norm': -1.0}, 'grad_clip_norm=-1.0'),
])
def test_bad_optimizer_settings(opt, match):
  with pytest.raises(ConfigError, match=match):
    make_optimizer(_config(**opt))


def _updates(tx, grads, params, steps=2):
  state = tx.init(params)
  out = []
  for _ in range(steps):
    updates, state = tx.update(grads, state, params)
    out.append(np.asarray(updates['w']))
  return out, state


def test_rmsprop_does_not_inherit_sgd_momentum():
  """The base config's momentum=0.9 is SGD's: rmsprop without its own rmsprop_momentum has none."""
  params, grads = {'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.5, 0.25])}
  ours, state = _updates(make_optimizer(_config(name='rmsprop', weight_decay=0.0, schedule='constant',
                                                warmup_steps=0)), grads, params)
  plain, _ = _updates(optax.rmsprop(1e-3, decay=0.9, eps=1e-8), grads, params)
  np.testing.assert_allclose(ours, plain, rtol=1e-6)
  assert not any(isinstance(s, optax.TraceState) for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(
      s, optax.TraceState)))


def test_weight_decay_is_l2_for_sgd_and_decoupled_for_adamw():
  params, grads = {'w': jnp.array([1.0, -2.0])}, {'w': jnp.array([0.5, 0.25])}
  (sgd_update,), _ = _updates(make_optimizer(_config(name='sgd', learning_rate=0.1, weight_decay=0.01,
                                                     schedule='constant', warmup_steps=0)), grads, params, 1)
  np.testing.assert_allclose(sgd_update, -0.1 * (np.array([0.5, 0.25]) + 0.01 * np.array([1.0, -2.0])), rtol=1e-6)
  ours, _ = _updates(make_optimizer(_config(name='adamw', learning_rate=0.1, weight_decay=0.01,
                                            schedule='constant', warmup_steps=0)), grads, params, 1)
  ref, _ = _updates(optax.adamw(0.1, weight_decay=0.01), grads, params, 1)
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


@pytest.mark.parametrize('key,value', [('weight_decay', -1e-4), ('grad_clip_norm', -1.0), ('momentum', -0.5),
                                       ('grad_accum_steps', 0)])
def test_bad_optimizer_setting_is_refused_before_use(key, value):
  name = 'momentum' if key == 'momentum' else 'adamw'
  with pytest.raises(ConfigError, match=f'config.optimizer.{key}='):
    make_optimizer(_config(name=name, **{key: value}))


@pytest.mark.parametrize('name,key,value', [('momentum', 'momentum', 1.0), ('adam', 'b1', 1.0), ('adamw', 'b2', 1.5),
                                            ('rmsprop', 'decay', 1.0), ('rmsprop', 'rmsprop_momentum', 2.0)])
def test_decay_rates_must_stay_below_one(name, key, value):
  with pytest.raises(ConfigError, match=rf'config.optimizer.{key}={value!r}: expected a number'):
    make_optimizer(_config(name=name, **{key: value}))
