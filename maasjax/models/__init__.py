"""Model registry: `config.model.name` -> a flax.linen module class.

Each family is one file; its constructor fields are the keys of `config.model` (besides `name`).
Adding a model is one file plus one entry here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import ml_collections

from maasjax.config import ConfigError, check_name
from maasjax.models.cnn import CNN
from maasjax.models.mlp import MLP
from maasjax.models.resnet import ResNet
from maasjax.models.graph import GAT, GCN
from maasjax.models.rnn import GRUClassifier, LSTMClassifier
from maasjax.models.transformer import DecoderLM, EncoderClassifier, EncoderDecoder

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


def register(name: str, cls: type[nn.Module]) -> None:
  MODELS[name] = cls


def model_kwargs(model_config: ml_collections.ConfigDict, cls: type[nn.Module],
                 extra: dict[str, Any]) -> dict[str, Any]:
  """Turns `config.model` into constructor kwargs, naming any key the model does not take."""
  fields = {f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')}
  kwargs = dict(extra)
  for key, value in model_config.items():
    if key == 'name':
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

  `config.dtype` (the compute dtype) is passed to models that take one.
  """
  name = config.model.name
  check_name('model', name, MODELS)
  cls = MODELS[name]
  if 'dtype' in config and 'dtype' not in config.model:
    extra.setdefault('dtype', config.dtype)
  return cls(**model_kwargs(config.model, cls, extra))
