"""Named partition presets -> explicit regex rules for a model's parameters.

`config.sharding.preset` picks one: 'replicate' (data parallel), 'fsdp' (each parameter split over
the 'fsdp' axis along its largest dimension that divides), 'tensor' (Megatron-style: the model
family's column/row-parallel layers over 'model'), or 'fsdp_tensor' (both). The preset is expanded
against the abstract parameter tree into plain `(regex, axes)` rules, appended after the config's own
`config.sharding.rules` (which therefore win), so every placement stays readable data.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import ml_collections
from jax.sharding import Mesh

from maasjax import parallel
from maasjax.config import ConfigError

PRESETS = ('replicate', 'fsdp', 'tensor', 'fsdp_tensor')
FSDP, MODEL = 'fsdp', 'model'

Rule = tuple[str, tuple]
Leaves = list[tuple[str, tuple[int, ...]]]  # ('Dense_0/kernel', shape), in tree order


def param_leaves(params: Any) -> Leaves:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [(parallel.path_name(path), tuple(getattr(leaf, 'shape', ()))) for path, leaf in flat]


def exact(name: str) -> str:
  """A regex matching this parameter path in the params and in optimizer state ('0/mu/' + path)."""
  return f'(^|/){re.escape(name)}$'


# ---- tensor parallelism, per model family: {param path -> axes per dim} -------------------------

def dense_stack_tensor_axes(leaves: Leaves) -> dict[str, tuple]:
  """Top-level Dense_i layers (MLP, CNN head) in pairs: column-parallel (output units over 'model'),
  then row-parallel (input units over 'model', outputs summed), so activations between a pair stay
  split and only the pair's output is all-reduced. The last layer, when it would start a new pair,
  stays replicated (its width is the number of classes)."""
  layers = sorted({int(m.group(1)) for name, _ in leaves if (m := re.match(r'^Dense_(\d+)/', name))})
  axes = {}
  for i, index in enumerate(layers):
    layer = f'Dense_{index}'
    if i % 2 == 0 and i < len(layers) - 1:
      axes[f'{layer}/kernel'], axes[f'{layer}/bias'] = (None, MODEL), (MODEL,)
    elif i % 2 == 1:
      axes[f'{layer}/kernel'] = (MODEL, None)
  return axes


def transformer_tensor_axes(leaves: Leaves, model_size: int) -> dict[str, tuple]:
  """Attention heads and MLP hidden units over 'model' (Megatron): q/k/v and the MLP's first layer
  split their outputs, the attention output and the MLP's second layer split their inputs. The token
  embedding and the logits layer split the vocabulary when the axis divides it (else replicated)."""
  axes = {}
  for name, shape in leaves:
    for pattern, spec in TRANSFORMER_TENSOR_RULES:
      if re.search(pattern, name):
        axes[name] = spec
        break
    for pattern, spec, vocab_dim in TRANSFORMER_VOCAB_RULES:
      if re.search(pattern, name) and shape[vocab_dim] % model_size == 0:
        axes[name] = spec
  return axes


# Against maasjax/models/transformer.py's names; 'attention/' also matches 'cross_attention/'.
# q/k/v kernels are [D, H, K] and the output's [H, K, D]: heads split; the MLP is [D, F] then [F, D].
TRANSFORMER_TENSOR_RULES: list[Rule] = [
    (r'attention/(query|key|value)/kernel$', (None, MODEL, None)),
    (r'attention/(query|key|value)/bias$', (MODEL, None)),
    (r'attention/out/kernel$', (MODEL, None, None)),
    (r'mlp/wi/kernel$', (None, MODEL)),
    (r'mlp/wi/bias$', (MODEL,)),
    (r'mlp/wo/kernel$', (MODEL, None)),
]
# (pattern, axes, the vocabulary's dimension): used only where the 'model' axis divides the vocabulary.
TRANSFORMER_VOCAB_RULES: list[tuple[str, tuple, int]] = [
    (r'embed/embedding$', (MODEL, None), 0),
    (r'(^|/)logits/kernel$', (None, MODEL), 1),
    (r'(^|/)logits/bias$', (MODEL,), 0),
]

# model name -> (param leaves, size of the 'model' axis) -> {param path: axes}.
TENSOR_AXES: dict[str, Callable[[Leaves, int], dict[str, tuple]]] = {
    'mlp': lambda leaves, _: dense_stack_tensor_axes(leaves),  # layer widths need not divide: no size check
    'cnn': lambda leaves, _: dense_stack_tensor_axes(leaves),
    'transformer_lm': transformer_tensor_axes,
    'transformer_classifier': transformer_tensor_axes,
    'transformer_seq2seq': transformer_tensor_axes,
}


# ---- FSDP -----------------------------------------------------------------------------------------

def add_fsdp(shape: tuple[int, ...], axes: tuple, size: int, min_size: int) -> tuple:
  """Puts 'fsdp' on the largest still-unsplit dimension that it divides (the first of equals)."""
  if size <= 1 or not shape or math.prod(shape) < min_size or FSDP in _flat(axes):
    return axes
  free = [d for d in range(len(shape)) if axes[d] is None and shape[d] % size == 0]
  if not free:
    return axes
  best = max(free, key=lambda d: (shape[d], -d))
  return axes[:best] + (FSDP,) + axes[best + 1:]


def _flat(axes: tuple) -> list:
  out = []
  for a in axes:
    out.extend(a if isinstance(a, tuple) else (a,))
  return out


# ---- the preset as rules --------------------------------------------------------------------------

def preset_rules(preset: str, model_name: str, params: Any, mesh: Mesh, fsdp_min_size: int = 0) -> list[Rule]:
  """Expands a preset into one exact rule per parameter it places (replicated ones get none)."""
  if preset not in PRESETS:
    raise ConfigError(f'config.sharding.preset={preset!r}: expected one of {", ".join(PRESETS)}')
  use_fsdp, use_tensor = preset in ('fsdp', 'fsdp_tensor'), preset in ('tensor', 'fsdp_tensor')
  for wanted, axis in ((use_fsdp, FSDP), (use_tensor, MODEL)):
    if wanted and axis not in mesh.shape:
      raise ConfigError(f'config.sharding.preset={preset!r} splits parameters over mesh axis {axis!r}, which '
                        f'config.mesh={dict(mesh.shape)} lacks; add it, e.g. config.mesh.{axis}=-1')
  leaves = param_leaves(params)
  tensor = {}
  if use_tensor:
    if model_name not in TENSOR_AXES:
      raise ConfigError(f'config.sharding.preset={preset!r}: model {model_name!r} has no tensor-parallel '
                        f'layout; models with one: {", ".join(sorted(TENSOR_AXES))} (or write '
                        f'config.sharding.rules yourself)')
    tensor = TENSOR_AXES[model_name](leaves, mesh.shape[MODEL])
  rules = []
  for name, shape in leaves:
    axes = tuple(tensor.get(name, ())) + (None,) * (len(shape) - len(tensor.get(name, ())))
    if use_fsdp:
      axes = add_fsdp(shape, axes, mesh.shape[FSDP], fsdp_min_size)
    if any(a is not None for a in axes):
      rules.append((name, axes))
  # Deepest paths first: the rule for 'Dense_0/kernel' also matches 'block/Dense_0/kernel'.
  rules.sort(key=lambda rule: -rule[0].count('/'))
  return [(exact(name), axes) for name, axes in rules]


def plan(config: ml_collections.ConfigDict) -> Callable[[Any, Mesh], list[Rule]]:
  """`(abstract params, mesh) -> rules`: the config's own rules first, then its preset expanded."""
  sharding = config.get('sharding') or ml_collections.ConfigDict()
  preset = sharding.get('preset', 'replicate')
  min_size = int(sharding.get('fsdp_min_size', 0))
  own = parallel.sharding_rules(config)
  model_name = config.model.name if 'model' in config else ''

  def rules_for(params: Any, mesh: Mesh) -> list[Rule]:
    names = [name for name, _ in param_leaves(params)]
    stray = [p for p, _ in own if not any(re.search(p, n) for n in names)]
    if stray:
      raise ConfigError(f'config.sharding.rules: pattern {stray[0]!r} matches no parameter of model '
                        f'{model_name!r}; its parameters are: {", ".join(names)}')
    return own + preset_rules(preset, model_name, params, mesh, min_size)
  return rules_for
