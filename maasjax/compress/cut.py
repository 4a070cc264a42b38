"""Layer cutting: remove Transformer blocks, CNN/ResNet stages or MLP hidden layers by index, keep every other
trained array whose shape still fits (renumbered), re-initialise the ones that no longer fit, then fine-tune."""
from __future__ import annotations

import re

import jax
import numpy as np

from maasjax.compress import settings as compress_settings
from maasjax.compress.pruning import named_leaves
from maasjax.parallel import path_name
from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError

TRANSFORMERS = ('transformer_classifier', 'transformer_lm', 'transformer_seq2seq')


def _renumber(kept: list[int]) -> dict[int, int]:
  return {old: new for new, old in enumerate(kept)}


def plan_cut(model: dict, layers: tuple[int, ...]) -> tuple[dict, dict[str, dict[int, int]]]:
  """(model config changes, {module name prefix: old index -> new index}) for cutting `layers`."""
  name = model['name']
  if name in TRANSFORMERS:
    count, key = int(model['num_layers']), 'num_layers'
  elif name == 'cnn':
    count, key = len(model['features']), 'features'
  elif name == 'mlp':
    count, key = len(model['hidden']), 'hidden'
  elif name == 'resnet':
    count, key = len(model['stage_sizes']), 'stage_sizes'
  else:
    raise ConfigError(f'--method cut: model {name!r} is not supported (supported: cnn and resnet stages, mlp '
                      f'hidden layers, {", ".join(TRANSFORMERS)} blocks)')
  bad = [i for i in layers if i >= count]
  if bad or len(layers) >= count:
    raise ConfigError(f'config.compress.layers={layers!r}: model {name!r} has {count} {key} (indices 0..{count - 1})'
                      ' and at least one must stay')
  kept = [i for i in range(count) if i not in layers]
  if key == 'num_layers':
    return {key: len(kept)}, {'layers_': _renumber(kept)}
  if name in ('cnn', 'mlp'):
    widths = [model[key][i] for i in kept]
    prefix = 'Conv_' if name == 'cnn' else 'Dense_'
    mapping = _renumber(kept)
    if name == 'mlp':
      mapping[count] = len(kept)  # the head Dense follows the hidden layers
    return {key: tuple(widths)}, {prefix: mapping}
  # resnet: blocks are numbered across stages (ResidualBlock_0, 1, ...)
  sizes = list(model[key])
  starts = np.cumsum([0] + sizes)
  kept_blocks = [b for s in kept for b in range(starts[s], starts[s + 1])]
  return {key: tuple(sizes[s] for s in kept)}, {'ResidualBlock_': _renumber(kept_blocks)}


def old_path(new_path: str, mappings: dict[str, dict[int, int]]) -> str:
  """The source path of a new parameter path: each renumbered module name mapped back."""
  def back(part: str) -> str:
    for prefix, mapping in mappings.items():
      if m := re.fullmatch(re.escape(prefix) + r'(\d+)', part):
        inverse = {new: old for old, new in mapping.items()}
        return f'{prefix}{inverse[int(m.group(1))]}' if int(m.group(1)) in inverse else part
    return part
  return '/'.join(back(p) for p in new_path.split('/'))


def transplant(old_tree, new_tree, mappings) -> tuple[object, list[str]]:
  """`new_tree` with each leaf replaced by its source leaf where that exists with the same shape; also the
  paths that keep their fresh initialisation."""
  old = named_leaves(jax.device_get(old_tree))
  fresh = []

  def pick(path, leaf):
    name = path_name(path)
    src = old.get(old_path(name, mappings))
    if src is not None and np.shape(src) == np.shape(leaf):
      return np.asarray(src)
    fresh.append(name)
    return np.asarray(leaf)
  return jax.tree_util.tree_map_with_path(pick, jax.device_get(new_tree)), fresh


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method cut: the shorter model, trained arrays carried over, fine-tuned."""
  from maasjax.train.loop import setup
  layers = compress_settings.cut_layers(config)
  if config.model.get('quantization'):
    raise ConfigError('--method cut: the workdir\'s model is quantized; cut its float source instead')
  changes, mappings = plan_cut(config.model.to_dict(), layers)
  steps = compress_settings.fine_tune_steps(config, 'cut')
  new = derived_config(config, steps, compress_settings.learning_rate(config), **changes)
  fresh_state = setup(new).steps.init()
  params, fresh_params = transplant(state.params, fresh_state.params, mappings)
  model_state, fresh_stats = transplant(state.model_state, fresh_state.model_state, mappings)
  facts = {'model_before': {k: config.model[k] for k in changes}, 'model_after': changes,
           'reinitialized': sorted(fresh_params + fresh_stats)}
  return Transformed(new, params, model_state, steps, facts)
