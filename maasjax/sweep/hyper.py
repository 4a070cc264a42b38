"""The `h` vocabulary of Flax/scenic sweep configs: each function returns a list of trials, a trial being a
dict of `config.*` overrides.

  h.product([h.sweep('config.optimizer.learning_rate', [1e-3, 3e-3]), h.sweep('config.seed', [0, 1])])
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from maasjax.config import ConfigError

Trial = dict[str, Any]


def _key(key: str) -> str:
  if not isinstance(key, str) or not key.startswith('config.') or len(key) <= len('config.'):
    raise ConfigError(f'sweep key {key!r}: expected a dotted config key such as config.optimizer.learning_rate')
  return key


def fixed(key: str, value: Any) -> list[Trial]:
  return [{_key(key): value}]


def sweep(key: str, values: Sequence[Any]) -> list[Trial]:
  values = list(values)
  if not values:
    raise ConfigError(f'h.sweep({key!r}, []): expected at least one value')
  return [{_key(key): v} for v in values]


def product(parts: Sequence[list[Trial]]) -> list[Trial]:
  """Every combination, the last part varying fastest."""
  out = []
  for combo in itertools.product(*parts):
    trial: Trial = {}
    for t in combo:
      trial.update(t)
    out.append(trial)
  return out


def zipit(parts: Sequence[list[Trial]]) -> list[Trial]:
  """Element-wise: the parts must have the same length."""
  lengths = {len(p) for p in parts}
  if len(lengths) > 1:
    raise ConfigError(f'h.zipit: the parts have different lengths {sorted(lengths)}; expected equal lengths')
  return [dict(kv for t in ts for kv in t.items()) for ts in zip(*parts)]


def chainit(parts: Sequence[list[Trial]]) -> list[Trial]:
  """One after another."""
  return [t for p in parts for t in p]
