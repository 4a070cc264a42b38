"""Poisson sampling for DP-SGD: each training example joins step t's batch with probability q, drawn from
(seed, step), padded with masked rows to a fixed maximum so the jitted step compiles once."""
from __future__ import annotations

import math

import numpy as np

OVERFLOW_SIGMAS = 7.0  # the maximum batch sits this many binomial standard deviations above its mean


def max_batch_size(num_examples: int, q: float, multiple: int = 1) -> int:
  """Mean q N plus 7 standard deviations (rounded up to `multiple`): overflowing it has probability
  below 1e-9 per step (`overflow_probability` gives the exact binomial tail)."""
  mean, std = q * num_examples, math.sqrt(num_examples * q * (1 - q))
  size = min(num_examples, int(math.ceil(mean + OVERFLOW_SIGMAS * std)) + 1)
  return int(math.ceil(size / multiple) * multiple)


def overflow_probability(num_examples: int, q: float, max_size: int) -> float:
  """P(a Poisson-sampled batch holds more than max_size examples), per step."""
  from scipy.stats import binom
  return float(binom.sf(max_size, num_examples, q))


def poisson_indices(seed: int, step: int, num_examples: int, q: float, max_size: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
  """(indices [max_size], mask [max_size], examples dropped by overflow) of step `step`'s sample.

  A pure function of its arguments, so a resumed run draws the same batches. Padding rows repeat
  example 0 with mask 0 (they contribute nothing).
  """
  rng = np.random.default_rng([seed, step, 0x5A3])  # its own stream: not the shuffle's or the augmentation's
  chosen = np.flatnonzero(rng.random(num_examples) < q)
  dropped = max(0, len(chosen) - max_size)
  chosen = chosen[:max_size]
  indices = np.zeros(max_size, np.int64)
  indices[:len(chosen)] = chosen
  mask = np.zeros(max_size, np.float32)
  mask[:len(chosen)] = 1.0
  return indices, mask, dropped
