"""`config.compress`, read and checked where it is read: one ConfigError naming the key for each bad value."""
from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

import ml_collections

from maasjax.config import ConfigError, check_name

METHODS = ('prune', 'channels', 'quantize', 'distill', 'cut', 'fold')
DISTRIBUTIONS = ('uniform', 'erk', 'global')
SCHEDULES = ('oneshot', 'gradual')
MODES = ('ptq', 'qat')
# Steps of training after the transform when config.compress.fine_tune_steps is -1.
DEFAULT_STEPS = {'prune': 300, 'channels': 300, 'cut': 300, 'quantize': 0, 'fold': 0}
QAT_STEPS = 200


def compress_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config's compress section, completed with the defaults (a workdir trained before it existed has none)."""
  from maasjax.defaults import base_config
  section = base_config().compress
  own = config.get('compress')
  if own is not None:
    for key, value in own.items():
      with section.unlocked():
        section[key] = value
  return section


def with_compress_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose compress section holds every key (so --config.compress.KEY overrides apply)."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.compress = compress_section(config)
  return config


def _number(section, key: str, low: float, high: float, closed_high: bool = False) -> float:
  value = section[key]
  inside = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value and (
      value <= high if closed_high else value < high)
  if not inside:
    raise ConfigError(f'config.compress.{key}={value!r}: expected a number in [{low:g}, {high:g}'
                      f'{"]" if closed_high else ")"}')
  return float(value)


def _integer(section, key: str, low: int) -> int:
  value = section[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ConfigError(f'config.compress.{key}={value!r}: expected an integer >= {low}')
  return value


@dataclasses.dataclass(frozen=True)
class PruneSettings:
  """Magnitude pruning: a final sparsity per layer (distribution) or an N:M pattern, reached on a schedule."""
  sparsity: float
  pattern: str  # 'unstructured' or 'N:M'
  distribution: str
  schedule: str
  start_step: int
  end_step: int
  update_every: int
  overrides: tuple[tuple[str, float], ...]  # (path regex, sparsity); 0 keeps a layer dense

  @property
  def n_m(self) -> tuple[int, int] | None:
    if self.pattern == 'unstructured':
      return None
    n, m = self.pattern.split(':')
    return int(n), int(m)


def prune_settings(config: ml_collections.ConfigDict) -> PruneSettings:
  c = compress_section(config)
  sparsity = _number(c, 'sparsity', 0.0, 1.0)
  pattern = c.pattern
  if pattern != 'unstructured' and not re.fullmatch(r'[1-9][0-9]*:[1-9][0-9]*', str(pattern)):
    raise ConfigError(f'config.compress.pattern={pattern!r}: expected unstructured or N:M (e.g. 2:4)')
  if pattern != 'unstructured':
    n, m = (int(v) for v in pattern.split(':'))
    if n >= m:
      raise ConfigError(f'config.compress.pattern={pattern!r}: N:M keeps N of every M weights; expected N < M')
  check_name('pruning distribution (config.compress.distribution)', c.distribution, DISTRIBUTIONS)
  check_name('pruning schedule (config.compress.schedule)', c.schedule, SCHEDULES)
  start = _integer(c, 'start_step', 0)
  end = c.end_step
  if end == -1:  # the default: reach the final sparsity two thirds into the run, then recover at it
    end = start + (2 * max(0, int(config.num_train_steps) - start)) // 3
  if isinstance(end, bool) or not isinstance(end, int) or end < start:
    raise ConfigError(f'config.compress.end_step={c.end_step!r}: expected an integer >= start_step ({start}), '
                      'or -1 (two thirds into the run)')
  update_every = _integer(c, 'update_every', 1)
  return PruneSettings(sparsity, pattern, c.distribution, c.schedule, start, end, update_every,
                       layer_overrides(config))


def layer_overrides(config: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
  """config.compress.overrides: ((path regex, share in [0, 1)), ...), a sparsity (prune) or a fraction of
  units removed (channels) per layer; the first match wins."""
  c = compress_section(config)
  overrides = []
  for item in c.overrides:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
      raise ConfigError(f'config.compress.overrides={tuple(c.overrides)!r}: expected ((path regex, sparsity), ...),'
                        " e.g. (('Dense_1/kernel', 0.0),)")
    try:
      re.compile(item[0])
    except re.error as e:
      raise ConfigError(f'config.compress.overrides: {item[0]!r} is not a regular expression ({e})') from None
    value = item[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
      raise ConfigError(f'config.compress.overrides: {value!r} for {item[0]!r}: expected a number in [0, 1)')
    overrides.append((item[0], float(value)))
  return tuple(overrides)


def fine_tune_steps(config: ml_collections.ConfigDict, method: str, default: int | None = None) -> int:
  c = compress_section(config)
  steps = c.fine_tune_steps
  if steps == -1:
    if default is not None:
      return default
    if method == 'quantize' and c.mode == 'qat':
      return QAT_STEPS
    return DEFAULT_STEPS[method]
  return _integer(c, 'fine_tune_steps', 0)


def learning_rate(config: ml_collections.ConfigDict) -> float:
  value = compress_section(config).learning_rate
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
    raise ConfigError(f'config.compress.learning_rate={value!r}: expected a positive number')
  return float(value)


def fraction(config: ml_collections.ConfigDict) -> float:
  return _number(compress_section(config), 'fraction', 0.0, 1.0)


def quantize_mode(config: ml_collections.ConfigDict) -> tuple[str, int]:
  c = compress_section(config)
  check_name('quantization mode (config.compress.mode)', c.mode, MODES)
  return c.mode, _integer(c, 'calibration_batches', 1)


def distill_settings(config: ml_collections.ConfigDict) -> tuple[float, float, float]:
  """(temperature, alpha, mixup)."""
  c = compress_section(config)
  t = c.temperature
  if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
    raise ConfigError(f'config.compress.temperature={t!r}: expected a positive number')
  m = c.get('mixup', 0.0)
  if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
    raise ConfigError(f'config.compress.mixup={m!r}: expected the Beta(m, m) concentration of the mixing '
                      'weight, a number >= 0 (0: no mixup)')
  return float(t), _number(c, 'alpha', 0.0, 1.0, closed_high=True), float(m)


def student_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.compress.student, 'key=value, key=value' with Python literals, as a dict of model settings."""
  text = compress_section(config).student
  if not isinstance(text, str):
    raise ConfigError(f'config.compress.student={text!r}: expected model settings as text, e.g. '
                      "'features=(8, 16), dense=32'")
  if not text.strip():
    return {}
  try:
    call = ast.parse(f'f({text})', mode='eval').body
    if call.args:
      raise ValueError('every setting needs a name')
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
  except (SyntaxError, ValueError) as e:
    raise ConfigError(f'config.compress.student={text!r}: expected key=value pairs of Python literals, e.g. '
                      f"'features=(8, 16), dense=32' ({e})") from None


def cut_layers(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  layers = compress_section(config).layers
  if isinstance(layers, int) and not isinstance(layers, bool):
    layers = (layers,)
  if (not isinstance(layers, (tuple, list)) or not layers
      or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
    raise ConfigError(f'config.compress.layers={layers!r}: expected the indices of the layers to cut, e.g. (1,)')
  return tuple(sorted(set(layers)))
