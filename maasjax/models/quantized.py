"""int8 models through qwix (`config.model.quantization`): 'int8' stores int8 weights and runs w8a8 int8
convolutions and matmuls with calibrated (static) activation scales; 'int8_qat' trains float weights through
fake-quantized int8 ops (straight-through gradients). Conv stays w8a8: XLA:CPU has no weight-only int8 conv."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from maasjax.config import ConfigError

QUANTIZATIONS = ('int8', 'int8_qat')


def _rule(cls, **extra):
  return cls(module_path='.*', weight_qtype=jnp.int8, act_qtype=jnp.int8, **extra)


def to_plain(tree) -> Any:
  """qwix's param tree (WithAux/QArray leaves) as nested dicts of arrays, None fields left out: what
  checkpoints, the exporter and the server store ('kernel': {'array': {'qvalue': int8, 'scale': f32}})."""
  def strip(x):
    if isinstance(x, dict):
      return {k: strip(v) for k, v in x.items() if v is not None}
    return x
  return strip(flax.serialization.to_state_dict(tree))


def from_plain(template, plain) -> Any:
  """The inverse of `to_plain`, with the structure (and how-to-quantize data) of `template`."""
  def fill(t, p):
    if isinstance(t, dict):
      return {k: (None if v is None else fill(v, p[k])) for k, v in t.items()}
    return p
  return flax.serialization.from_state_dict(template, fill(flax.serialization.to_state_dict(template), plain))


class Int8Model:
  """A flax module run with qwix's post-training-quantization provider; init/apply take and give plain
  variables (`to_plain`), so the train state, Orbax, jax2tf and the server see ordinary arrays."""

  def __init__(self, module):
    import qwix
    self.module = module
    self.qmodule = qwix.quantize_model(module, qwix.PtqProvider([_rule(qwix.QuantizationRule,
                                                                       act_static_scale=True)]))
    self._templates: dict = {}

  def template(self, *args, **kwargs):
    """The quantized variables' structure for inputs shaped like `args` (abstract, no computation)."""
    key = tuple((tuple(a.shape[1:]), str(a.dtype)) for a in jax.tree.leaves(args))
    if key not in self._templates:
      specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
      self._templates[key] = jax.eval_shape(
          lambda *xs: self.qmodule.init(jax.random.key(0), *xs, train=kwargs.get('train', False)), *specs)
    return self._templates[key]

  def init(self, rngs, *args, **kwargs):
    return to_plain(self.qmodule.init(rngs, *args, **kwargs))

  def apply(self, variables, *args, **kwargs):
    return self.qmodule.apply(from_plain(self.template(*args, **kwargs), variables), *args, **kwargs)

  def __getattr__(self, name):  # the float module's settings (num_classes, features, ...)
    return getattr(self.module, name)


def quantize_model(module, quantization: str):
  """`module` as an int8 model ('int8') or a quantization-aware training model ('int8_qat')."""
  if quantization not in QUANTIZATIONS:
    raise ConfigError(f'config.model.quantization={quantization!r}: expected one of {", ".join(QUANTIZATIONS)} '
                      "(or '' for float)")
  if quantization == 'int8':
    return Int8Model(module)
  import qwix
  # Dynamic activation scales in training: qwix 0.1.8's static-scale statistics leak tracers out of its
  # custom-gradient conv. The int8 model made from it calibrates static scales afresh.
  return qwix.quantize_model(module, qwix.QtProvider([_rule(qwix.QtRule)]))
