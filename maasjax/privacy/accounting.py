"""Epsilon of DP-SGD with dp-accounting: the Poisson-sampled Gaussian mechanism composed over the steps.

`epsilon(q, sigma, steps, delta)` is what `dp_accounting` itself computes for
SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps), with the RDP accountant
(default) or PLD; `calibrate_noise` finds the smallest noise multiplier that meets a target epsilon.
"""
from __future__ import annotations

import math

from maasjax.config import ConfigError

ACCOUNTANTS = ('rdp', 'pld')
MAX_NOISE_MULTIPLIER = 1000.0  # beyond this the gradient is noise alone: the target is unreachable in practice


def default_delta(num_train_examples: int) -> float:
  """1 / (10 N): the usual choice, well below 1/N (a mechanism that leaks one example fully has delta 1/N)."""
  return 1.0 / (10.0 * num_train_examples)


def _accountant(kind: str):
  import dp_accounting
  if kind == 'pld':
    return dp_accounting.pld.PLDAccountant()
  return dp_accounting.rdp.RdpAccountant()


def _event(q: float, sigma: float, steps: int):
  import dp_accounting
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), int(steps))


def epsilon(q: float, noise_multiplier: float, steps: int, delta: float, accountant: str = 'rdp') -> float:
  """(epsilon at delta) after `steps` Poisson-sampled Gaussian steps; inf without noise, 0 before any step."""
  if steps <= 0:
    return 0.0
  if noise_multiplier <= 0:
    return math.inf
  acc = _accountant(accountant)
  acc.compose(_event(q, noise_multiplier, steps))
  return float(acc.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, q: float, steps: int, delta: float, accountant: str = 'rdp') -> float:
  """The smallest noise multiplier whose epsilon after `steps` is at most `target_epsilon`."""
  import dp_accounting
  if epsilon(q, MAX_NOISE_MULTIPLIER, steps, delta, accountant) > target_epsilon:
    raise ConfigError(f'config.privacy.target_epsilon={target_epsilon:g} is unreachable in {steps} steps at '
                      f'sampling rate {q:.4g} and delta {delta:.3g} (even noise multiplier {MAX_NOISE_MULTIPLIER:g} '
                      f'gives more); train fewer steps, sample fewer examples per step, or raise the target')
  try:
    sigma = dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda s: _event(q, s, steps), target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(1e-3, MAX_NOISE_MULTIPLIER), tol=1e-4)
  except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as e:
    raise ConfigError(f'config.privacy.target_epsilon={target_epsilon:g}: no noise multiplier found ({e})') from None
  # The search returns a value within tol of the optimum: step up until the budget really holds.
  while epsilon(q, sigma, steps, delta, accountant) > target_epsilon:
    sigma *= 1.0001
  return float(sigma)
