"""Serving signatures: what an exported model takes and returns, supplied per task.

The hook: a task may define `export_signatures(model) -> dict[str, Signature]`. Each Signature
names its raw inputs (`TensorSpec`: shape with `None` for the batch axis, dtype, finiteness), a
pure JAX `fn(variables, inputs) -> outputs` (dicts of arrays, preprocessing inside), and
`example_inputs(batch)` mapping a held-out dataset batch to those inputs (for the parity check
and warm-up). `serving_default` is required. Set `batchable=False` for inputs whose leading axis
is not one example per row (e.g. padded graphs), so the server never concatenates requests.
Tasks without the hook get a default by task name from `DEFAULT_SIGNATURES` (classification here;
`register_default(name, fn)` adds more). Example, for a language model's `generate`:

  def export_signatures(self, model):
    return {'serving_default': ..., 'generate': Signature(
        inputs={'tokens': TensorSpec((None, None), 'int32')}, fn=greedy_decode,
        example_inputs=lambda batch: {'tokens': batch['inputs']}, polymorphic={'tokens': 'b, t'})}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from maasjax.config import ConfigError

SERVING_DEFAULT = 'serving_default'


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One input tensor: shape (None = any size; the first axis is the batch), numpy dtype name."""
  shape: tuple[int | None, ...]
  dtype: str
  finite: bool = False  # reject NaN/inf in requests

  def to_dict(self) -> dict[str, Any]:
    return {'shape': [-1 if d is None else int(d) for d in self.shape], 'dtype': self.dtype, 'finite': self.finite}


@dataclasses.dataclass
class Signature:
  inputs: dict[str, TensorSpec]
  fn: Callable[[Any, dict[str, Any]], dict[str, Any]]  # (variables, inputs) -> named outputs
  example_inputs: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
  # jax2tf polymorphic shape per input; default: the leading axis is the batch 'b'.
  polymorphic: dict[str, str] | None = None
  batchable: bool = True
  tolerance: float = 1e-5  # parity bound on float outputs (max abs difference)

  def polymorphic_shapes(self) -> dict[str, str]:
    return {name: (self.polymorphic or {}).get(name, 'b, ...') for name in self.inputs}


def classification_signatures(task, model) -> dict[str, Signature]:
  """Raw pixels in; logits, probabilities, classes (and top-k beyond 5 classes) out."""
  import jax
  import jax.numpy as jnp
  info = task.info
  num_classes = int(info.num_classes)
  k = min(5, num_classes)

  def serve(variables, inputs):
    logits_BxC = task.forward(model, variables, {'inputs': inputs['inputs']}, train=False)
    probs_BxC = jax.nn.softmax(logits_BxC, axis=-1)
    out = {'logits': logits_BxC, 'probabilities': probs_BxC,
           'classes': jnp.argmax(logits_BxC, axis=-1).astype(jnp.int32)}
    if num_classes > 5:
      # argsort, not lax.top_k: TF 2.21 cannot deserialize the StableHLO that jax 0.10 emits for top_k.
      top_i_BxK = jnp.argsort(-probs_BxC, axis=-1)[:, :k].astype(jnp.int32)
      out.update(top_k_probabilities=jnp.take_along_axis(probs_BxC, top_i_BxK, axis=-1), top_k_classes=top_i_BxK)
    return out

  dtype = str(np.dtype(info.input_dtype))
  spec = TensorSpec((None,) + tuple(int(d) for d in info.input_shape), dtype, finite=dtype.startswith('float'))
  return {SERVING_DEFAULT: Signature({'inputs': spec}, serve, lambda batch: {'inputs': np.asarray(batch['inputs'])})}


DEFAULT_SIGNATURES: dict[str, Callable[[Any, Any], dict[str, Signature]]] = {
    'classification': classification_signatures,
}


def register_default(task_name: str, fn: Callable[[Any, Any], dict[str, Signature]]) -> None:
  DEFAULT_SIGNATURES[task_name] = fn


def signatures_for(task, model) -> dict[str, Signature]:
  """The task's own `export_signatures(model)` if it has one, else the default for its name."""
  if hasattr(task, 'export_signatures'):
    sigs = task.export_signatures(model)
  elif task.name in DEFAULT_SIGNATURES:
    sigs = DEFAULT_SIGNATURES[task.name](task, model)
  else:
    raise ConfigError(f'task {task.name!r} has no serving signature; define {type(task).__name__}.export_signatures'
                      f'(model) or maasjax.export.signatures.register_default({task.name!r}, fn)')
  if SERVING_DEFAULT not in sigs:
    raise ConfigError(f'task {task.name!r}: export signatures {sorted(sigs)} lack {SERVING_DEFAULT!r}')
  return sigs
