"""Structured pruning that removes units: the lowest-L1 conv channels and dense neurons of every hidden layer
(Li et al. 2017), with the next layer's matching inputs, giving smaller arrays and a smaller model config.
`config.compress.fraction` applies to every hidden layer; `config.compress.overrides` ((layer regex, fraction),
...) sets single layers, e.g. (('Conv_0', 0.0),) keeps the first conv whole."""
from __future__ import annotations

import re

import numpy as np

from maasjax.compress import settings as compress_settings
from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError

FAMILIES = ('cnn', 'mlp')


def keep_indices(kernel: np.ndarray, fraction: float) -> np.ndarray:
  """The output units (last axis) to keep: all but the `fraction` with the smallest L1 norm, in order."""
  scores = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
  keep = max(1, int(round(kernel.shape[-1] * (1.0 - fraction))))
  return np.sort(np.argsort(-scores, kind='stable')[:keep])


def _take(layer: dict, out_keep: np.ndarray | None = None, in_keep: np.ndarray | None = None) -> dict:
  kernel = np.asarray(layer['kernel'])
  if in_keep is not None:
    kernel = np.take(kernel, in_keep, axis=-2)
  new = dict(layer)
  if out_keep is not None:
    kernel = np.take(kernel, out_keep, axis=-1)
    if 'bias' in layer:
      new['bias'] = np.asarray(layer['bias'])[out_keep]
  new['kernel'] = kernel
  return new


def layer_fraction(name: str, fraction: float, overrides: tuple[tuple[str, float], ...]) -> float:
  """The share of a layer's units removed: the first override whose regex matches its name, else `fraction`."""
  return next((f for pattern, f in overrides if re.search(pattern, name)), fraction)


def prune_cnn(params: dict, features: tuple[int, ...], fraction: float, overrides=()) -> tuple[dict, dict]:
  """CNN: Conv_i channels, then the flattened features' rows of Dense_0 (spatial-major, channel-minor, as
  `reshape` lays them out), then Dense_0's units and Dense_1's inputs."""
  new, keep = {}, None
  for i in range(len(features)):
    out_keep = keep_indices(np.asarray(params[f'Conv_{i}']['kernel']), layer_fraction(f'Conv_{i}', fraction, overrides))
    new[f'Conv_{i}'] = _take(params[f'Conv_{i}'], out_keep, keep)
    keep = out_keep
  rows = np.asarray(params['Dense_0']['kernel']).shape[0]
  positions = rows // features[-1]
  flat_keep = (np.arange(positions)[:, None] * features[-1] + keep[None, :]).ravel()
  dense_keep = keep_indices(np.asarray(params['Dense_0']['kernel']), layer_fraction('Dense_0', fraction, overrides))
  new['Dense_0'] = _take(params['Dense_0'], dense_keep, flat_keep)
  new['Dense_1'] = _take(params['Dense_1'], None, dense_keep)
  changes = {'features': tuple(int(len(new[f'Conv_{i}']['bias'])) for i in range(len(features))),
             'dense': int(len(dense_keep))}
  return new, changes


def prune_mlp(params: dict, hidden: tuple[int, ...], fraction: float, overrides=()) -> tuple[dict, dict]:
  new, keep = {}, None
  for i in range(len(hidden)):
    out_keep = keep_indices(np.asarray(params[f'Dense_{i}']['kernel']), layer_fraction(f'Dense_{i}', fraction,
                                                                                       overrides))
    new[f'Dense_{i}'] = _take(params[f'Dense_{i}'], out_keep, keep)
    keep = out_keep
  head = f'Dense_{len(hidden)}'
  new[head] = _take(params[head], None, keep)
  return new, {'hidden': tuple(int(len(new[f'Dense_{i}']['bias'])) for i in range(len(hidden)))}


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method channels: the smaller model (config.model.features/dense or hidden), fine-tuned."""
  import jax
  name = config.model.name
  if name not in FAMILIES or config.model.get('quantization'):
    raise ConfigError(f'--method channels: model {name!r} is not supported (supported: {", ".join(FAMILIES)} in '
                      'float; a ResNet\'s residual additions tie the channels of its blocks together)')
  fraction = compress_settings.fraction(config)
  overrides = compress_settings.layer_overrides(config)
  params = jax.device_get(state.params)
  if name == 'cnn':
    new_params, changes = prune_cnn(params, tuple(config.model.features), fraction, overrides)
  else:
    new_params, changes = prune_mlp(params, tuple(config.model.hidden), fraction, overrides)
  steps = compress_settings.fine_tune_steps(config, 'channels')
  facts = {'model_before': {k: config.model[k] for k in changes}, 'model_after': changes}
  return Transformed(derived_config(config, steps, compress_settings.learning_rate(config), **changes),
                     new_params, state.model_state, steps, facts)
