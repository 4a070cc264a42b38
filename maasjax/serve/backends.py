"""A loaded model version: its signatures (input specs, outputs) and a `run(signature, inputs)` call.

Two backends give the same outputs from the version folder alone: the JAX artifact (jax.export modules and
variables, the default: faster per call) and the SavedModel run by TF (`--backend savedmodel`: what TF
Serving and KServe run).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import numpy as np

from maasjax.export import layout
from maasjax.serve.shapes import ShapeBuckets, bucketed
from maasjax.spec import TensorSpec

log = logging.getLogger('maasjax.serve')


@dataclasses.dataclass
class ServableSignature:
  inputs: dict[str, TensorSpec]  # shape None: any size; axis 0 is the batch
  outputs: dict[str, tuple[tuple[int | None, ...], np.dtype]]
  batchable: bool = True


@dataclasses.dataclass
class LoadedModel:
  name: str
  version: int
  path: str
  platform: str  # 'tensorflow_savedmodel' or 'jax'
  signatures: dict[str, ServableSignature]
  metadata: dict[str, Any]
  run: Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
  batchers: dict[str, Any] = dataclasses.field(default_factory=dict)  # filled by the app, in its event loop
  handle: Any = None  # keeps the loaded SavedModel alive (its signatures hold weak references)
  # Signatures with variable axes besides the batch, padded to shape buckets (maasjax.serve.shapes).
  buckets: dict[str, ShapeBuckets] = dataclasses.field(default_factory=dict)
  lm: Any = None  # a decoder LM's decode-slot modules (maasjax.serve.engine.LMFunctions), served on /v1/completions
  engine: Any = None  # its DecodeEngine, started by the app on the first completion

  def __post_init__(self):
    for sig_name in self.signatures:
      b = ShapeBuckets.for_signature(_meta_signature(self.metadata, sig_name))
      if b is not None:
        self.buckets[sig_name] = b
    if self.buckets:
      self.run = bucketed(self.run, self.buckets)

  def warm_up(self, batch_sizes: list[int]) -> None:
    """Runs every signature once per batch size and per shape bucket (zeros), so requests of the usual shapes
    never wait for a compile."""
    for sig_name, sig in self.signatures.items():
      b = self.buckets.get(sig_name)
      if b is not None:
        for request in b.warmup_requests(sig.inputs):
          self.run(sig_name, request)
        if b.graph:
          continue
      for rows in (batch_sizes if sig.batchable else [1]):
        self.run(sig_name, {k: np.zeros((rows,) + tuple(d or 1 for d in s.shape[1:]), s.dtype)
                            for k, s in sig.inputs.items()})
    if self.lm is not None:
      self.lm.warm_up()


def lm_functions(path: str, meta: dict | None, variables=None):
  """The version's decode-slot modules if its export wrote them (maasjax.export.lm), else None."""
  if not meta or not meta.get('lm') or not meta.get('tokenizer'):
    return None
  import jax
  from maasjax.export import lm, portable
  from maasjax.serve.engine import LMFunctions
  from maasjax.tokenizers import tokenizer_from_dict
  if variables is None:
    with np.load(os.path.join(path, portable.JAX_DIR, portable.VARIABLES_FILE)) as npz:
      variables = jax.device_put(portable.unflatten({k: npz[k] for k in npz.files}))
  return LMFunctions(lm.load(path, meta['lm']), variables, tokenizer_from_dict(meta['tokenizer']))


def _meta_signature(meta: dict | None, name: str) -> dict:
  return ((meta or {}).get('signatures') or {}).get(name, {})


def _input_spec(tf_spec, recorded: dict | None) -> TensorSpec:
  """The SavedModel's shape and dtype, with what a request may hold (finite, low, high) from the metadata."""
  shape, dtype = tuple(tf_spec.shape.as_list()), np.dtype(tf_spec.dtype.as_numpy_dtype).name
  if not recorded:
    return TensorSpec(shape, dtype)
  r = TensorSpec.from_dict(recorded)
  return TensorSpec(shape, dtype, r.finite, r.low, r.high)


def load_savedmodel(path: str, name: str, version: int) -> LoadedModel:
  import tensorflow as tf
  if not os.path.exists(os.path.join(path, 'saved_model.pb')):
    raise ValueError(f'{path} has no saved_model.pb; expected a SavedModel written by maasjax export')
  meta = layout.read_metadata(path)
  loaded = tf.saved_model.load(path)
  fns, sigs = {}, {}
  for sig_name, fn in loaded.signatures.items():
    _, kw = fn.structured_input_signature
    extra = _meta_signature(meta, sig_name)
    inputs = {k: _input_spec(spec, extra.get('inputs', {}).get(k)) for k, spec in kw.items()}
    order = list(extra.get('outputs', {}))  # the exporter's order (logits, probabilities, ...), not TF's
    outputs = {k: (tuple(spec.shape.as_list()), np.dtype(spec.dtype.as_numpy_dtype)) for k, spec in
               sorted(fn.structured_outputs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))}
    batchable = extra.get('batchable', all(s.shape and s.shape[0] is None for s in inputs.values()))
    sigs[sig_name] = ServableSignature(inputs, outputs, bool(batchable))
    fns[sig_name] = fn

  def run(sig_name, inputs):
    out = fns[sig_name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: out[k].numpy() for k in sigs[sig_name].outputs}

  return LoadedModel(name, version, path, 'tensorflow_savedmodel', sigs, meta or {}, run, handle=loaded,
                     lm=lm_functions(path, meta))


def load_jax(path: str, name: str, version: int) -> LoadedModel:
  """The version's own JAX artifact (jax.export modules + variables.npz, maasjax.export.portable): no
  training code, no workdir, no jax.distributed. A version exported before the artifact existed is served
  from its SavedModel, with a log line."""
  from maasjax.export import portable
  meta = layout.read_metadata(path)
  if not meta or not portable.has_artifact(path):
    log.warning('model %s version %d has no JAX artifact (%s/): serving its SavedModel instead', name, version,
                portable.JAX_DIR)
    return load_savedmodel(path, name, version)
  variables, fns = portable.load(path, list(meta['signatures']))
  sigs = {}
  for sig_name, recorded in meta['signatures'].items():
    inputs = {k: TensorSpec.from_dict(v) for k, v in recorded['inputs'].items()}
    outputs = {k: (tuple(None if d < 0 else d for d in o['shape']), np.dtype(o['dtype']))
               for k, o in recorded.get('outputs', {}).items()}
    sigs[sig_name] = ServableSignature(inputs, outputs, bool(recorded.get('batchable', True)))

  def run(sig_name, inputs):  # np.asarray per output: jax.device_get's tree walk costs more than the call
    return {k: np.asarray(v) for k, v in fns[sig_name](variables, inputs).items()}

  return LoadedModel(name, version, path, 'jax', sigs, meta, run, lm=lm_functions(path, meta, variables))


BACKENDS = {'savedmodel': load_savedmodel, 'jax': load_jax}
