"""Shape buckets for the request path: a signature whose inputs have variable axes besides the batch (an
LM's sequence length; a graph's nodes, edges and graphs) is called only at power-of-two sizes of those
axes, so the compiled functions (XLA in JAX or in TF's XlaCallModule) stay a small, warmed-up set instead
of one compile per new request shape; outputs are cut back to the request's sizes.

Token axes are padded with 0 (padding, masked by the model) on the right. Graphs (the six jraph arrays)
are padded as training pads them: one extra graph holds the extra nodes and edges, which touch no real
node, so real nodes' and graphs' outputs are unchanged.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

GRAPH_KEYS = ('nodes', 'edges', 'senders', 'receivers', 'n_node', 'n_edge')
MINIMUM = {'n': 64, 'e': 64, 'g': 2}  # as training pads graph batches (maasjax.data.graphs.pad_graphs)
DEFAULT_MINIMUM = 8
WARM_DOUBLINGS = 4  # buckets warmed up at load per variable axis: the minimum and 3 doublings


def bucket(size: int, minimum: int) -> int:
  return max(int(minimum), 1 << max(0, int(size) - 1).bit_length())


class ShapeBuckets:
  """Pads the variable axes of one signature's requests; `None` from `for_signature` when it has none."""

  def __init__(self, input_axes: dict[str, list], output_axes: dict[str, list], batchable: bool):
    self.input_axes, self.output_axes = input_axes, output_axes
    self.graph = set(input_axes) == set(GRAPH_KEYS)
    batch = {'b'} if batchable else set()
    self.symbols = sorted({d for axes in input_axes.values() for d in axes if isinstance(d, str)} - batch)

  @classmethod
  def for_signature(cls, meta_signature: dict) -> 'ShapeBuckets | None':
    inputs, outputs = meta_signature.get('input_axes'), meta_signature.get('output_axes')
    if not inputs or not outputs:  # an export from before axes were recorded: served as sent
      return None
    buckets = cls(inputs, outputs, bool(meta_signature.get('batchable', True)))
    return buckets if buckets.symbols else None

  def sizes(self, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    out = {}
    for name, axes in self.input_axes.items():
      for d, size in zip(axes, inputs[name].shape):
        if d in self.symbols:
          out[d] = int(size)
    return out

  def pad(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    sizes = self.sizes(inputs)
    if self.graph:
      return self._pad_graph(inputs, sizes), sizes
    padded = {}
    for name, x in inputs.items():
      widths = [(0, bucket(x.shape[i], MINIMUM.get(d, DEFAULT_MINIMUM)) - x.shape[i]) if d in self.symbols else (0, 0)
                for i, d in enumerate(self.input_axes[name])]
      padded[name] = np.pad(x, widths) if any(w for _, w in widths) else x
    return padded, sizes

  def _pad_graph(self, g: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    n, e, k = g['nodes'].shape[0], g['edges'].shape[0], g['n_node'].shape[0]
    n_to, e_to, k_to = bucket(n + 1, MINIMUM['n']), bucket(e, MINIMUM['e']), bucket(k + 1, MINIMUM['g'])
    rows = lambda x, size, fill=0: np.concatenate([x, np.full((size - x.shape[0],) + x.shape[1:], fill, x.dtype)])
    counts = lambda x, extra, size: rows(np.concatenate([x, np.array([extra], x.dtype)]), size)
    return {'nodes': rows(g['nodes'], n_to), 'edges': rows(g['edges'], e_to),
            'senders': rows(g['senders'], e_to, n), 'receivers': rows(g['receivers'], e_to, n),  # the padding node
            'n_node': counts(g['n_node'], n_to - n, k_to), 'n_edge': counts(g['n_edge'], e_to - e, k_to)}

  def cut(self, outputs: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    out = {}
    for name, x in outputs.items():
      index = tuple(slice(0, sizes[d]) if d in sizes else slice(None) for d in self.output_axes.get(name, ()))
      out[name] = x[index] if index else x
    return out

  def warmup_requests(self, specs: dict) -> list[dict[str, np.ndarray]]:
    """Zero requests at the smallest buckets (one row), so the usual shapes are compiled before serving."""
    requests = []
    for doubling in range(WARM_DOUBLINGS):
      size = {d: MINIMUM.get(d, DEFAULT_MINIMUM) * 2 ** doubling for d in self.symbols}
      if self.graph:
        n = size['n'] - 1
        requests.append({'nodes': np.zeros((n,) + tuple(specs['nodes'].shape[1:]), specs['nodes'].np_dtype),
                         'edges': np.zeros((0,) + tuple(specs['edges'].shape[1:]), specs['edges'].np_dtype),
                         'senders': np.zeros(0, np.int32), 'receivers': np.zeros(0, np.int32),
                         'n_node': np.array([n], np.int32), 'n_edge': np.array([0], np.int32)})
        continue
      request = {}
      for name, axes in self.input_axes.items():
        shape = [1 if d == 'b' else size.get(d, d) if isinstance(d, str) else d for d in axes]
        request[name] = np.zeros(shape, specs[name].np_dtype)
      requests.append(request)
    return requests


def bucketed(run: Callable[[str, dict], dict], buckets: dict[str, ShapeBuckets]) -> Callable[[str, dict], dict]:
  """`run(signature, inputs)` that pads variable axes to buckets first and cuts the outputs back."""
  def run_bucketed(sig_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    b = buckets.get(sig_name)
    if b is None:
      return run(sig_name, inputs)
    padded, sizes = b.pad(inputs)
    return b.cut(run(sig_name, padded), sizes)
  run_bucketed.inner = run
  return run_bucketed
