"""`config.privacy` checked and resolved into what the step, the sampler and the accountant need."""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from maasjax.config import ConfigError
from maasjax.privacy import accounting, sampling

SAMPLINGS = ('poisson', 'fixed')


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  l2_norm_clip: float
  noise_multiplier: float  # calibrated when target_epsilon > 0
  delta: float
  sampling: str  # 'poisson' | 'fixed'
  accountant: str  # 'rdp' | 'pld'
  sampling_rate: float  # q = batch_size / num_train_examples
  num_examples: int
  batch_size: int  # expected examples per step
  max_batch_size: int  # rows per Poisson batch (real ones masked in), so the step compiles once
  overflow_probability: float  # per step, of a Poisson sample larger than max_batch_size
  target_epsilon: float

  def step_settings(self) -> dict[str, float]:
    return {'l2_norm_clip': self.l2_norm_clip, 'noise_multiplier': self.noise_multiplier,
            'expected_batch_size': float(self.batch_size)}

  def metrics(self, steps: int) -> dict[str, float]:
    eps = accounting.epsilon(self.sampling_rate, self.noise_multiplier, steps, self.delta, self.accountant)
    return {'privacy/epsilon': eps, 'privacy/delta': self.delta, 'privacy/noise_multiplier': self.noise_multiplier,
            'privacy/sampling_rate': self.sampling_rate, 'privacy/steps': float(steps),
            'privacy/l2_norm_clip': self.l2_norm_clip}

  def describe(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _number(p, key: str, default: float) -> float:
  value = p.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ConfigError(f'config.privacy.{key}={value!r}: expected a number')
  return float(value)


def plan(config: ml_collections.ConfigDict, num_examples: int, batch_multiple: int = 1) -> PrivacyPlan | None:
  """None when `config.privacy.enabled` is false; else the checked plan (ConfigError naming the key)."""
  p = config.get('privacy')
  if p is None or not bool(p.get('enabled', False)):
    return None
  clip = _number(p, 'l2_norm_clip', 1.0)
  sigma = _number(p, 'noise_multiplier', 1.1)
  target = _number(p, 'target_epsilon', 0.0)
  delta = _number(p, 'delta', 0.0)
  if clip <= 0:
    raise ConfigError(f'config.privacy.l2_norm_clip={clip:g}: expected a positive clipping norm')
  if sigma < 0:
    raise ConfigError(f'config.privacy.noise_multiplier={sigma:g}: expected a number >= 0 (0: no noise, no privacy)')
  if target < 0:
    raise ConfigError(f'config.privacy.target_epsilon={target:g}: expected >= 0 (0: use noise_multiplier as given)')
  if not 0 <= delta < 1:
    raise ConfigError(f'config.privacy.delta={delta:g}: expected 0 <= delta < 1 (0: 1 / (10 N))')
  kind = p.get('sampling', 'poisson')
  if kind not in SAMPLINGS:
    raise ConfigError(f'config.privacy.sampling={kind!r}: expected one of {", ".join(SAMPLINGS)}')
  accountant = p.get('accountant', 'rdp')
  if accountant not in accounting.ACCOUNTANTS:
    raise ConfigError(f'config.privacy.accountant={accountant!r}: expected one of {", ".join(accounting.ACCOUNTANTS)}')
  batch = int(config.batch_size)
  if batch >= num_examples:
    raise ConfigError(f'config.batch_size={batch}: DP-SGD samples a fraction of the {num_examples} training '
                      'examples per step; expected a batch size below that')
  q = batch / num_examples
  delta = delta or accounting.default_delta(num_examples)
  steps = int(config.num_train_steps)
  if target > 0:
    sigma = accounting.calibrate_noise(target, q, steps, delta, accountant)
  max_size = sampling.max_batch_size(num_examples, q, batch_multiple) if kind == 'poisson' else batch
  overflow = sampling.overflow_probability(num_examples, q, max_size) if kind == 'poisson' else 0.0
  return PrivacyPlan(clip, sigma, delta, kind, accountant, q, num_examples, batch, max_size, overflow, target)
