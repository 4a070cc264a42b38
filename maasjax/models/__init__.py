"""Model registry: `config.model.name` -> a flax.linen module class.

Each family is one file; its constructor fields are the keys of `config.model` (besides `name`).
Adding a model is one file plus one entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import ml_collections

from maasjax.config import ConfigError, check_name
from maasjax.models.cnn import CNN
from maasjax.models.mlp import MLP
from maasjax.models.resnet import ResNet
from maasjax.models.graph import GAT, GCN, READOUTS
from maasjax.models.rnn import CELLS, GRUClassifier, LSTMClassifier
from maasjax.models.transformer import POSITIONS, DecoderLM, EncoderClassifier, EncoderDecoder, TransformerBase

# name -> module class. The class's dataclass fields are its config keys.
MODELS: dict[str, type[nn.Module]] = {
    'mlp': MLP,
    'cnn': CNN,
    'resnet': ResNet,
    'gcn': GCN,
    'gat': GAT,
    'transformer_classifier': EncoderClassifier,
    'transformer_lm': DecoderLM,
    'transformer_seq2seq': EncoderDecoder,
    'lstm': LSTMClassifier,
    'gru': GRUClassifier,
}


DTYPES = ('float32', 'bfloat16', 'float16')


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _widths(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) > 0 and all(_int(w) and w > 0 for w in v)


# Settings shared by name across families: (is it valid, what is expected). Checked before any tracing,
# so a bad value is one ConfigError naming config.model.KEY, not a traceback from inside flax.
SETTING_CHECKS = {
    'num_layers': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'num_heads': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'emb_dim': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'mlp_dim': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'max_len': (lambda v: _int(v) and v > 0, 'a positive integer (the KV cache / position table length)'),
    'dense': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'width': (lambda v: _int(v) and v > 0, 'a positive integer'),
    'vocab_size': (lambda v: _int(v) and v >= 0, 'an integer >= 0'),
    'attention_window': (lambda v: _int(v) and v >= 0, 'an integer >= 0 (0: no window)'),
    'dropout': (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                'a rate in [0, 1)'),
    'attention_dropout': (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                          'a rate in [0, 1)'),
    'features': (_widths, 'a non-empty tuple of positive integers, e.g. (32, 64)'),
    'hidden': (_widths, 'a non-empty tuple of positive integers, e.g. (256, 256)'),
    'stage_sizes': (_widths, 'a non-empty tuple of positive integers (blocks per stage), e.g. (2, 2, 2)'),
    'remat': (lambda v: isinstance(v, bool), 'true or false'),
    'bidirectional': (lambda v: isinstance(v, bool), 'true or false'),
    'batch_norm': (lambda v: isinstance(v, bool), 'true or false (false: BatchNorm folded into the convolutions)'),
    'add_self_loops': (lambda v: isinstance(v, bool), 'true or false'),
    'positions': (lambda v: v in POSITIONS, 'one of ' + ', '.join(POSITIONS)),
    'readout': (lambda v: v in READOUTS, 'one of ' + ', '.join(READOUTS)),
    'cell': (lambda v: v in CELLS, 'one of ' + ', '.join(CELLS)),
    'dtype': (lambda v: v in DTYPES, 'one of ' + ', '.join(DTYPES)),
}
# Per family, where the meaning differs from the shared one.
FAMILY_CHECKS = {
    'gcn': {'embed_dim': (lambda v: _int(v) and v >= 0, 'an integer >= 0 (0: no input embedding)')},
    'gat': {'embed_dim': (lambda v: _int(v) and v >= 0, 'an integer >= 0 (0: no input embedding)')},
    'lstm': {'embed_dim': (lambda v: _int(v) and v > 0, 'a positive integer')},
    'gru': {'embed_dim': (lambda v: _int(v) and v > 0, 'a positive integer')},
}


def check_settings(name: str, cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
  """Raises ConfigError for the first model setting a family cannot build with (before any tracing)."""
  checks = dict(SETTING_CHECKS, **FAMILY_CHECKS.get(name, {}))
  for key, value in kwargs.items():
    if key in checks and not checks[key][0](value):
      raise ConfigError(f'config.model.{key}={value!r}: model {name!r} expects {checks[key][1]}')
  if issubclass(cls, GAT):
    # Hidden layers concatenate their heads, each of width // num_heads: a width that is not a multiple
    # would silently become a narrower layer than the one asked for.
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    hidden, heads = kwargs.get('hidden', fields['hidden']), kwargs.get('num_heads', fields['num_heads'])
    uneven = [w for w in hidden if w % heads]
    if uneven:
      raise ConfigError(f'config.model.hidden={tuple(hidden)!r}: with config.model.num_heads={heads}, every hidden '
                        f'width must be a multiple of num_heads (the heads are concatenated); {uneven[0]} is not')
  if issubclass(cls, TransformerBase):
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    emb, heads = kwargs.get('emb_dim', fields['emb_dim']), kwargs.get('num_heads', fields['num_heads'])
    if emb % heads:
      divisors = [h for h in range(1, emb + 1) if emb % h == 0 and h <= 64]
      raise ConfigError(f'config.model.num_heads={heads}: must divide config.model.emb_dim={emb} (each head gets '
                        f'emb_dim / num_heads channels); with emb_dim={emb}, num_heads may be '
                        f'{", ".join(map(str, divisors))}')


def model_kwargs(model_config: ml_collections.ConfigDict, cls: type[nn.Module],
                 extra: dict[str, Any]) -> dict[str, Any]:
  """Turns `config.model` into constructor kwargs, naming any key the model does not take."""
  fields = {f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')}
  kwargs = dict(extra)
  for key, value in model_config.items():
    if key in ('name', 'quantization'):  # quantization wraps the built module (build_model)
      continue
    if key not in fields:
      raise ConfigError(f'config.model.{key}: model {model_config.name!r} has no setting {key!r}; '
                        f'its settings are: {", ".join(sorted(fields - set(extra)))}')
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    kwargs[key] = tuple(value) if isinstance(value, list) else value
  return {k: v for k, v in kwargs.items() if k in fields}


def build_model(config: ml_collections.ConfigDict, **extra: Any) -> nn.Module:
  """Builds `config.model` with dataset-derived fields (e.g. num_classes) in `extra`.

  `config.dtype` (the compute dtype) is passed to models that take one; `config.model.quantization` ('int8',
  'int8_qat') wraps the module with qwix (maasjax.models.quantized).
  """
  name = config.model.name
  check_name('model', name, MODELS)
  cls = MODELS[name]
  if 'dtype' in config and 'dtype' not in config.model:
    extra.setdefault('dtype', config.dtype)
  kwargs = model_kwargs(config.model, cls, extra)
  check_settings(name, cls, kwargs)
  module = cls(**kwargs)
  if config.model.get('quantization'):  # int8 (maasjax compress --method quantize) or int8_qat
    from maasjax.models.quantized import quantize_model
    return quantize_model(module, config.model.quantization)
  return module
