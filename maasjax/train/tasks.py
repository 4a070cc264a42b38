"""Tasks: how a batch goes through a model, and the loss and metrics it is scored by.

A task is pure: `forward` calls the model on a batch, `loss_and_sums` turns outputs into a
scalar loss plus per-batch metric *sums* (with a 'count'), so evaluation over padded batches
and over many hosts is exact: metrics = sums / count.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maasjax.config import ConfigError
from maasjax.data.base import DatasetInfo
from maasjax.spec import SERVING_DEFAULT, Signature, TensorSpec


def preprocess_inputs(x, info: DatasetInfo):
  """Raw client input -> model input: cast and per-channel normalise (inside jit and the export)."""
  x = jnp.asarray(x).astype(jnp.float32)
  mean = jnp.asarray(info.input_mean, jnp.float32)
  std = jnp.asarray(info.input_std, jnp.float32)
  shape = (1,) * (x.ndim - 1) + (mean.shape[0],)
  return (x - jnp.reshape(mean, shape)) / jnp.reshape(std, shape)


def run_model(model, variables, args: tuple, train: bool, rngs=None, mutable=False, init=False):
  """`model.init(rngs, *args)` when `init`, else `model.apply(variables, *args)`: the two calls a task makes."""
  if init:
    return model.init(rngs, *args, train=train)
  return model.apply(variables, *args, train=train, rngs=rngs, mutable=mutable)


class Task:
  """Base class; subclasses set `name` and implement the three methods."""
  name = ''
  # Metric names reported as (sum / count), e.g. 'loss', 'accuracy'.
  metric_names: tuple[str, ...] = ()
  # True when a batch cannot be split along axis 0 (a padded GraphsTuple, a whole graph): it is
  # then replicated on every device instead of sharded over the mesh's batch axes.
  replicate_batch = False

  def __init__(self, info: DatasetInfo):
    self.info = info

  def example_inputs(self, batch_size: int = 1) -> Any:
    """Raw inputs of the dataset's shape and dtype, for init and tracing."""
    return jnp.zeros((batch_size,) + tuple(self.info.input_shape), self.info.input_dtype)

  def init_variables(self, model, rngs) -> dict[str, Any]:
    """The model's variables, initialised on one example batch."""
    return self.forward(model, None, self.example_batch(1), train=False, rngs=rngs, init=True)

  def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
    return {'inputs': self.example_inputs(batch_size)}

  def forward(self, model, variables, batch, train: bool, rngs=None, mutable=False, init=False):
    """Runs the model on a batch: `model.init` when `init`, else `model.apply`."""
    raise NotImplementedError

  def loss_and_sums(self, outputs, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    raise NotImplementedError

  def eval_sums(self, outputs, batch) -> dict[str, jax.Array]:
    """Evaluation sums; a task may add 'examples' (per-example arrays gathered, not summed)."""
    return self.loss_and_sums(outputs, batch)[1]

  def finalize(self, sums: dict[str, Any], examples: dict[str, Any] | None = None) -> dict[str, float]:
    """Metrics from the summed values; `examples` holds a whole split's gathered 'examples'."""
    count = max(float(sums['count']), 1.0)
    return {name: float(sums[name]) / count for name in self.metric_names}

  def export_signatures(self, model) -> dict[str, Signature]:
    """What an export serves: {name: Signature}, `serving_default` among them (maasjax.spec.Signature)."""
    raise ConfigError(f'task {self.name!r} has no serving signature; define {type(self).__name__}.export_signatures')


class Classification(Task):
  """Softmax cross-entropy over integer labels; optional 'mask' weights padded examples out."""
  name = 'classification'
  metric_names = ('loss', 'accuracy')

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    x = preprocess_inputs(batch['inputs'], self.info)
    if init:
      return model.init(rngs, x, train=train)
    return model.apply(variables, x, train=train, rngs=rngs, mutable=mutable)

  def loss_and_sums(self, logits_BxC, batch):
    labels_B = batch['labels']
    mask_B = batch.get('mask', jnp.ones(labels_B.shape, jnp.float32))
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
    correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
    count = jnp.sum(mask_B)
    sums = {'loss': jnp.sum(loss_B * mask_B), 'accuracy': jnp.sum(correct_B * mask_B), 'count': count}
    return sums['loss'] / jnp.maximum(count, 1.0), sums

  def input_spec(self) -> TensorSpec:
    """Raw inputs as a client sends them (token ids are bounded by the vocabulary)."""
    dtype = str(np.dtype(self.info.input_dtype))
    return TensorSpec((None,) + tuple(int(d) for d in self.info.input_shape), dtype, finite=dtype.startswith('float'))

  def export_signatures(self, model) -> dict[str, Signature]:
    """Raw inputs in; logits, probabilities, classes (and top-5 beyond 5 classes) out."""
    num_classes = int(self.info.num_classes)
    k = min(5, num_classes)

    def serve(variables, inputs):
      logits_BxC = self.forward(model, variables, {'inputs': inputs['inputs']}, train=False)
      probs_BxC = jax.nn.softmax(logits_BxC, axis=-1)
      out = {'logits': logits_BxC, 'probabilities': probs_BxC,
             'classes': jnp.argmax(logits_BxC, axis=-1).astype(jnp.int32)}
      if num_classes > 5:
        # argsort, not lax.top_k: TF 2.21 cannot deserialize the StableHLO that jax 0.10 emits for top_k.
        top_i_BxK = jnp.argsort(-probs_BxC, axis=-1)[:, :k].astype(jnp.int32)
        out.update(top_k_probabilities=jnp.take_along_axis(probs_BxC, top_i_BxK, axis=-1), top_k_classes=top_i_BxK)
      return out

    return {SERVING_DEFAULT: Signature({'inputs': self.input_spec()}, serve,
                                       lambda batch: {'inputs': np.asarray(batch['inputs'])})}
