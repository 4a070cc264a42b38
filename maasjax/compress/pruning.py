"""Magnitude pruning as an optax wrapper whose state holds the masks (jaxpruner's design, reimplemented).

`prune_optimizer(tx, settings)` wraps any optimizer: after the inner update it recomputes the masks on the
schedule's steps (s_t = s_f (1 - (1 - p)^3) between start and end steps, or one shot at the start step) and
rewrites the update so that every pruned weight is exactly zero after it. The masks live in the optimizer
state, so they are checkpointed and resumed with it. Only leaves with ndim > 1 (kernels) are pruned.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maasjax.compress import settings as compress_settings
from maasjax.compress.settings import PruneSettings
from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError
from maasjax.parallel import path_name  # 'Conv_0/kernel' for a key path


def named_leaves(tree) -> dict[str, Any]:
  return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """How one leaf is pruned: 'fixed' (its own final sparsity), 'global' (one threshold shared by all global
  leaves) or 'nm' (keep n of every m along the input axis)."""
  kind: str
  sparsity: float = 0.0


def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
  """Erdős-Rényi-Kernel densities (Evci et al. 2020): density ∝ sum(shape) / prod(shape), scaled so that the
  leaves together keep (1 - sparsity) of their weights; a leaf that would exceed density 1 stays dense."""
  sizes = {k: float(np.prod(s)) for k, s in shapes.items()}
  raw = {k: float(np.sum(s)) / sizes[k] for k, s in shapes.items()}
  total_kept = (1.0 - sparsity) * sum(sizes.values())
  dense: set[str] = set()
  while True:
    rest = [k for k in shapes if k not in dense]
    if not rest:
      return {k: 1.0 for k in shapes}
    eps = (total_kept - sum(sizes[k] for k in dense)) / sum(raw[k] * sizes[k] for k in rest)
    over = [k for k in rest if eps * raw[k] > 1.0]
    if not over:
      return {k: 1.0 if k in dense else eps * raw[k] for k in shapes}
    dense.add(max(over, key=lambda k: raw[k]))


def plan_layers(params, settings: PruneSettings) -> dict[str, LayerPlan]:
  """Each prunable leaf's plan: kernels (ndim > 1) by the distribution, per-path overrides first (0 = dense)."""
  plans, shapes = {}, {}
  nm = settings.n_m
  for name, x in named_leaves(params).items():
    if np.ndim(x) < 2:
      continue
    override = next((s for pattern, s in settings.overrides if re.search(pattern, name)), None)
    if override is not None:
      if override > 0:
        plans[name] = LayerPlan('fixed', override)
      continue
    if nm is not None:
      if np.shape(x)[-2] % nm[1]:
        continue  # the input axis does not split into groups of m (e.g. a first conv's one channel): kept dense
      plans[name] = LayerPlan('nm')
    else:
      shapes[name] = tuple(int(d) for d in np.shape(x))
  if nm is None and settings.distribution == 'global':
    plans.update({k: LayerPlan('global', settings.sparsity) for k in shapes})
  elif nm is None and settings.distribution == 'erk':
    plans.update({k: LayerPlan('fixed', 1.0 - d) for k, d in erk_densities(shapes, settings.sparsity).items()})
  elif nm is None:
    plans.update({k: LayerPlan('fixed', settings.sparsity) for k in shapes})
  if not plans:
    raise ConfigError(f'config.compress: nothing to prune with pattern {settings.pattern!r} and overrides '
                      f'{settings.overrides!r}: no kernel (ndim > 1) qualifies')
  return plans


def schedule_factor(step, settings: PruneSettings):
  """The share of each layer's final sparsity in force at `step` (0 before start_step)."""
  step = jnp.asarray(step, jnp.float32)
  started = step >= settings.start_step
  if settings.schedule == 'oneshot' or settings.end_step == settings.start_step:
    return jnp.where(started, 1.0, 0.0)
  p = jnp.clip((step - settings.start_step) / (settings.end_step - settings.start_step), 0.0, 1.0)
  return jnp.where(started, 1.0 - (1.0 - p) ** 3, 0.0)


def is_update_step(step, settings: PruneSettings):
  """Whether masks are recomputed at `step`: the start step, then every update_every steps until end_step."""
  if settings.schedule == 'oneshot':
    return step == settings.start_step
  since = step - settings.start_step
  return (since >= 0) & (step <= settings.end_step) & ((since % settings.update_every == 0)
                                                       | (step == settings.end_step))


def _keep_top(scores: jax.Array, num_pruned) -> jax.Array:
  """True for all but the `num_pruned` lowest scores (exactly that many pruned, ties broken by position)."""
  flat = scores.ravel()
  ranks = jnp.zeros(flat.shape, jnp.int32).at[jnp.argsort(flat)].set(jnp.arange(flat.size, dtype=jnp.int32))
  return (ranks >= num_pruned).reshape(scores.shape)


def nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """Keeps the n largest of every m consecutive weights along the input axis (axis -2 of a kernel)."""
  moved = jnp.moveaxis(scores, -2, -1)
  grouped = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
  ranks = jnp.argsort(jnp.argsort(grouped, axis=-1), axis=-1)
  keep = (ranks >= m - n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, -2)


def compute_masks(scores: dict[str, jax.Array], plans: dict[str, LayerPlan], settings: PruneSettings,
                  factor) -> dict[str, jax.Array]:
  """Boolean keep-masks for the planned leaves from their scores (magnitudes), at `factor` of the final sparsity."""
  masks = {}
  nm = settings.n_m
  for name, plan in plans.items():
    if plan.kind == 'fixed':
      num = jnp.round(plan.sparsity * factor * scores[name].size).astype(jnp.int32)
      masks[name] = _keep_top(scores[name], num)
    elif plan.kind == 'nm':
      masks[name] = jnp.where(factor > 0, nm_mask(scores[name], *nm), True)
  global_names = [k for k, p in plans.items() if p.kind == 'global']
  if global_names:
    flat = jnp.concatenate([scores[k].ravel() for k in global_names])
    num = jnp.round(settings.sparsity * factor * flat.size).astype(jnp.int32)
    keep = _keep_top(flat, num)
    offset = 0
    for k in global_names:
      masks[k] = keep[offset:offset + scores[k].size].reshape(scores[k].shape)
      offset += scores[k].size
  return masks


def masks_tree(params, masks: dict[str, jax.Array]):
  """Masks in the params' structure: the leaf's mask, or a scalar True for leaves that are not pruned."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: masks.get(path_name(p), jnp.ones((), jnp.bool_)), params)


def prune_params(params, settings: PruneSettings, factor: float = 1.0):
  """One-shot magnitude pruning of a params tree (pure): (pruned params, masks tree)."""
  plans = plan_layers(params, settings)
  leaves = named_leaves(params)
  masks = masks_tree(params, compute_masks({k: jnp.abs(leaves[k]) for k in plans}, plans, settings,
                                           jnp.float32(factor)))
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), params, masks), masks


class PruneState(NamedTuple):
  inner: Any  # the wrapped optimizer's state
  masks: Any  # bool, in the params' structure (scalar True where a leaf is not pruned)
  count: jax.Array  # updates taken (the schedule's step)


def prune_optimizer(tx: optax.GradientTransformation, settings: PruneSettings) -> optax.GradientTransformation:
  """`tx` followed by magnitude pruning: masks in the state, pruned weights exactly 0 after every update."""

  def init(params):
    leaves = named_leaves(params)
    masks = {k: jnp.ones(np.shape(leaves[k]), jnp.bool_) for k in plan_layers(params, settings)}
    return PruneState(tx.init(params), masks_tree(params, masks), jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('prune_optimizer needs params in update()')
    inner_updates, inner_state = tx.update(updates, state.inner, params)
    plans = plan_layers(params, settings)

    def new_masks(_):
      # Scores: magnitudes after this update; weights already pruned stay pruned (sparsity only grows).
      leaves = named_leaves(jax.tree.map(lambda p, u, m: jnp.where(m, jnp.abs(p + u), -1.0),
                                         params, inner_updates, state.masks))
      return masks_tree(params, compute_masks({k: leaves[k] for k in plans}, plans, settings,
                                              schedule_factor(state.count, settings)))

    masks = jax.lax.cond(is_update_step(state.count, settings), new_masks, lambda _: state.masks, None)
    # p + (-p) is exactly 0; kept weights get the inner update unchanged.
    final = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), inner_updates, params, masks)
    return final, PruneState(inner_state, masks, state.count + 1)

  return optax.GradientTransformation(init, update)


def sparsity_of(params) -> tuple[int, int]:
  """(parameters, nonzero parameters) of a params tree (every leaf, integers included)."""
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(params))]
  return int(sum(x.size for x in leaves)), int(sum(np.count_nonzero(x) for x in leaves))


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method prune: the trained params, fine-tuned under the pruning optimizer (gradual by
  default); with fine_tune_steps 0, pruned at once."""
  steps = compress_settings.fine_tune_steps(config, 'prune')
  new = derived_config(config, steps, compress_settings.learning_rate(config))
  settings = compress_settings.prune_settings(new)  # validated, end_step resolved against the fine-tune's length
  params = state.params
  if steps == 0:
    params, _ = prune_params(state.params, dataclasses.replace(settings, schedule='oneshot'))
  return Transformed(new, params, state.model_state, steps, {'end_step': settings.end_step})
