"""What a compressed model costs: parameters, nonzero parameters, bytes and gzip bytes of its variables as the
export saves them (jax/variables.npz), and serving latency at batch 1 and 64 (median of timed jitted calls)."""
from __future__ import annotations

import gzip
import io
import time
from typing import Any

import jax
import numpy as np

from maasjax.compress.pruning import sparsity_of
from maasjax.export import portable

LATENCY_BATCHES = (1, 64)


def variables_bytes(variables: dict[str, Any]) -> tuple[int, int]:
  """(bytes, gzip bytes) of the variables written as the export's variables.npz."""
  buf = io.BytesIO()
  np.savez(buf, **portable.flatten(jax.device_get(variables)))
  data = buf.getvalue()
  return len(data), len(gzip.compress(data, compresslevel=9))


def size_figures(params, model_state) -> dict[str, int]:
  total, nonzero = sparsity_of(params)
  raw, packed = variables_bytes({'params': params, **model_state})
  return {'params': total, 'nonzero_params': nonzero, 'bytes': raw, 'gzip_bytes': packed}


def serving_call(exp, state):
  """(jitted serving_default function, variables, {batch: inputs}) on held-out test rows."""
  sig = exp.task.export_signatures(exp.model)['serving_default']
  split = 'test' if 'test' in exp.dataset.splits() else exp.dataset.splits()[-1]
  batch = next(iter(exp.dataset.eval_batches(split, max(LATENCY_BATCHES))))
  inputs = {k: np.asarray(v) for k, v in sig.example_inputs(batch).items()}
  by_size = {b: {k: v[:b] for k, v in inputs.items()} for b in LATENCY_BATCHES}
  variables = jax.device_put({'params': state.params, **state.model_state})
  return jax.jit(sig.fn), variables, by_size


def latencies_ms(calls: list, rounds: int = 7, per_round: int = 20) -> list[dict[str, float]]:
  """Median milliseconds per call at each batch size for each (fn, variables, inputs) in `calls`, measured
  in interleaved rounds so that the machine's drift hits every model alike."""
  times = [{b: [] for b in LATENCY_BATCHES} for _ in calls]
  for fn, variables, by_size in calls:  # compile and warm up
    for b in LATENCY_BATCHES:
      for _ in range(3):
        jax.block_until_ready(fn(variables, by_size[b]))
  for _ in range(rounds):
    for i, (fn, variables, by_size) in enumerate(calls):
      for b in LATENCY_BATCHES:
        n = per_round if b == 1 else max(3, per_round // 4)
        t0 = time.perf_counter()
        for _ in range(n):
          jax.block_until_ready(fn(variables, by_size[b]))
        times[i][b].append((time.perf_counter() - t0) / n * 1e3)
  return [{f'batch_{b}': float(np.median(t[b])) for b in LATENCY_BATCHES} for t in times]
