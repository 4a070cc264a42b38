"""The train state pytree and its sharded initialisation."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maasjax import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of train steps taken
  params: Any
  model_state: Any  # non-trainable collections, e.g. {'batch_stats': ...}; {} if none
  opt_state: Any


def count_params(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def make_init_fn(model, task, tx: optax.GradientTransformation, seed: int):
  """A pure function () -> TrainState, everything derived from the config's seed."""
  def init() -> TrainState:
    params_key, dropout_key = jax.random.split(jax.random.key(seed))
    variables = dict(task.init_variables(model, {'params': params_key, 'dropout': dropout_key}))
    params = variables.pop('params')
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params))
  return init


def state_shardings(abstract_state: TrainState, mesh: Mesh, rules) -> TrainState:
  """Params and optimizer state by the partition rules; step and model state replicated.

  `rules` is a list of (regex, axes), or a plan `(abstract params, mesh) -> rules` (sharding.plan)
  that expands a preset against the parameters; the optimizer state then follows the same rules.
  """
  if callable(rules):
    rules = rules(abstract_state.params, mesh)
  return TrainState(
      step=NamedSharding(mesh, P()),
      params=parallel.param_shardings(abstract_state.params, mesh, rules),
      model_state=jax.tree.map(lambda _: NamedSharding(mesh, P()), abstract_state.model_state),
      opt_state=parallel.param_shardings(abstract_state.opt_state, mesh, rules),
  )
