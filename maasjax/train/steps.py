"""Pure train and eval steps, and their jit-compiled, sharded forms.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` are pure:
dropout randomness is `fold_in(key(seed), step)`, so a step's result depends only on its inputs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
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


def make_private_train_step(model, task, tx: optax.GradientTransformation, seed: int, l2_norm_clip: float,
                            noise_multiplier: float, expected_batch_size: float):
  """DP-SGD: per-example gradients (vmap), clipped, summed over the batch's real rows ('mask'), noised once
  and divided by the expected batch size (maasjax.privacy.dpsgd). BatchNorm-free models only: batch
  statistics would mix examples. Dropout keys are per example; the noise key is fold_in(seed, step)."""
  from maasjax.privacy.dpsgd import private_gradient

  def example_loss(params, example, key):
    one = jax.tree.map(lambda x: x[None], example)
    outputs = task.forward(model, {'params': params}, one, train=True, rngs={'dropout': key})
    return task.loss_and_sums(outputs, one)

  per_example = jax.vmap(jax.value_and_grad(example_loss, has_aux=True), in_axes=(None, 0, 0))

  def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    step_key = jax.random.fold_in(jax.random.key(seed), state.step)
    dropout_key, noise_key = jax.random.split(step_key)
    rows = batch['mask'].shape[0]
    keys_B = jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(rows))
    (_, sums_B), grads_B = per_example(state.params, batch, keys_B)
    grads, norms_B = private_gradient(grads_B, batch['mask'], noise_key, l2_norm_clip, noise_multiplier,
                                      expected_batch_size)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = {k: jnp.sum(v) for k, v in sums_B.items()}
    sums.update(grad_norm=optax.global_norm(grads), examples=jnp.sum(batch['mask']),
                clipped=jnp.sum((norms_B > l2_norm_clip) * batch['mask']))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums
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


def train_compiler_options(model, mesh: Mesh) -> dict | None:
  """XLA options a model's class asks for its train step on CPU (`cpu_compiler_options`), else None."""
  if mesh.devices.flat[0].platform != 'cpu':
    return None
  return dict(getattr(type(model), 'cpu_compiler_options', None) or {}) or None


def compile_steps(model, task, tx, seed: int, mesh: Mesh, rules=(), privacy: dict | None = None) -> CompiledSteps:
  """The lm1b recipe: eval_shape(init) -> shardings from rules -> jit(init/train/eval).

  `privacy` ({'l2_norm_clip', 'noise_multiplier', 'expected_batch_size'}) makes the train step DP-SGD's.
  """
  init_fn = make_init_fn(model, task, tx, seed)
  shapes = jax.eval_shape(init_fn)
  shardings = state_shardings(shapes, mesh, rules)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  rep = NamedSharding(mesh, P())
  batch_sh = rep if task.replicate_batch else parallel.batch_sharding(mesh)
  init = jax.jit(init_fn, out_shardings=shardings)
  step_fn = (make_private_train_step(model, task, tx, seed, **privacy) if privacy
             else make_train_step(model, task, tx, seed))
  train_step = jax.jit(step_fn, in_shardings=(shardings, batch_sh), out_shardings=(shardings, rep),
                       donate_argnums=0, compiler_options=train_compiler_options(model, mesh))
  eval_step = jax.jit(make_eval_step(model, task), in_shardings=(shardings, batch_sh), out_shardings=rep)
  return CompiledSteps(mesh, abstract, shardings, init, train_step, eval_step, batch_sh)
