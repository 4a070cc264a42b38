"""Types and constants every layer shares (training, export, serving): numpy only, imports nothing of ours.

`TensorSpec` describes one input of a served signature, `Signature` one exported function; the token ids
PAD/BOS/EOS are the same in tokenizers, models, tasks and servers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

SERVING_DEFAULT = 'serving_default'  # the signature TF Serving and our server use when none is named
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # id 0 pads everywhere; BOS/EOS for vocabularies that have them


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One input tensor: shape (None = any size; the first axis is the batch), numpy dtype name, and what a
  request may hold (finite values only; a closed [low, high] range, e.g. token ids within the vocabulary)."""
  shape: tuple[int | None, ...]
  dtype: str
  finite: bool = False  # reject NaN/inf in requests
  low: float | None = None  # inclusive bounds on every value (None: only the dtype's own range)
  high: float | None = None

  def __post_init__(self):
    object.__setattr__(self, 'shape', tuple(None if d is None or int(d) < 0 else int(d) for d in self.shape))
    object.__setattr__(self, 'dtype', np.dtype(self.dtype).name)

  @property
  def np_dtype(self) -> np.dtype:
    return np.dtype(self.dtype)

  def to_dict(self) -> dict[str, Any]:
    d = {'shape': [-1 if s is None else int(s) for s in self.shape], 'dtype': self.dtype, 'finite': self.finite}
    if self.low is not None:
      d['low'] = self.low
    if self.high is not None:
      d['high'] = self.high
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'TensorSpec':
    return cls(tuple(d['shape']), d['dtype'], bool(d.get('finite', False)), d.get('low'), d.get('high'))


@dataclasses.dataclass
class Signature:
  """An exported function: raw inputs in, named outputs out (preprocessing inside `fn`).

  `example_inputs(batch)` maps a held-out dataset batch to the inputs (parity check, warm-up).
  `batchable=False` for inputs whose leading axis is not one example per row (padded graphs): a server
  never concatenates two requests' arrays then.
  """
  inputs: dict[str, TensorSpec]
  fn: Callable[[Any, dict[str, Any]], dict[str, Any]]  # (variables, inputs) -> named outputs
  example_inputs: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
  # jax2tf polymorphic shape per input; default: the leading axis is the batch 'b'.
  polymorphic: dict[str, str] | None = None
  batchable: bool = True
  tolerance: float = 1e-5  # parity bound on float outputs (max abs difference)

  def polymorphic_shapes(self) -> dict[str, str]:
    return {name: (self.polymorphic or {}).get(name, 'b, ...') for name in self.inputs}
