"""Pure train and eval steps, and their jit-compiled, sharded forms.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure:
dropout randomness is `fold_in(key(seed), step)`, so a step's result depends only on its inputs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maasjax import parallel
from maasjax.train.state import TrainState, make_init_fn, state_shardings


def make_train_step(model, task, tx: optax.GradientTransformation, seed: int):
  def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    mutable = list(state.model_state.keys())

    def loss_fn(params):
      variables = {'params': params, **state.model_state}
      out = task.forward(model, variables, batch, train=True, rngs={'dropout': dropout_key},
                         mutable=mutable if mutable else False)
      outputs, new_model_state = out if mutable else (out, state.model_state)
      loss, sums = task.loss_and_sums(outputs, batch)
      return loss, (sums, new_model_state)

    (loss, (sums, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, model_state=dict(new_model_state),
                              opt_state=opt_state)
    sums = dict(sums, grad_norm=optax.global_norm(grads))
    return new_state, sums
  return train_step


def make_eval_step(model, task):
  def eval_step(state: TrainState, batch) -> dict[str, jax.Array]:
    variables = {'params': state.params, **state.model_state}
    outputs = task.forward(model, variables, batch, train=False)
    return task.eval_sums(outputs, batch)
  return eval_step


@dataclasses.dataclass
class CompiledSteps:
  """jit-compiled init/train/eval over a mesh, with the shardings they were compiled for."""
  mesh: Mesh
  abstract_state: TrainState  # ShapeDtypeStructs carrying the state's shardings
  shardings: TrainState
  init: Callable[[], TrainState]
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]
  eval_step: Callable[[TrainState, Any], dict]
  batch_sharding: NamedSharding = None  # where a global batch goes (sharded, or replicated by the task)


def compile_steps(model, task, tx, seed: int, mesh: Mesh, rules=()) -> CompiledSteps:
  """The lm1b recipe: eval_shape(init) -> shardings from rules -> jit(init/train/eval)."""
  init_fn = make_init_fn(model, task, tx, seed)
  shapes = jax.eval_shape(init_fn)
  shardings = state_shardings(shapes, mesh, rules)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  rep = NamedSharding(mesh, P())
  batch_sh = rep if task.replicate_batch else parallel.batch_sharding(mesh)
  init = jax.jit(init_fn, out_shardings=shardings)
  train_step = jax.jit(make_train_step(model, task, tx, seed), in_shardings=(shardings, batch_sh),
                       out_shardings=(shardings, rep), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, task), in_shardings=(shardings, batch_sh), out_shardings=rep)
  return CompiledSteps(mesh, abstract, shardings, init, train_step, eval_step, batch_sh)
