"""Graph tasks: node classification (transductive masks), graph classification, multi-label graphs (masked
BCE, mean average precision over the whole split). Graph batches are replicated, not split along axis 0."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maasjax.data.graphs import batch_to_graph
from maasjax.spec import SERVING_DEFAULT, Signature, TensorSpec
from maasjax.train.tasks import Classification, preprocess_inputs, run_model


class GraphClassification(Classification):
  """Softmax cross-entropy per node (mask: the split's nodes) or per graph (mask: real graphs)."""
  name = 'graph_classification'
  replicate_batch = True

  def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
    """A tiny valid graph (2 nodes, one edge each way) plus a padding graph, for init and tracing."""
    edge_features = int(self.info.extra.get('graph', {}).get('edge_features', 1))
    return {'nodes': jnp.zeros((3,) + tuple(self.info.input_shape), jnp.float32),
            'edges': jnp.zeros((2, edge_features), jnp.float32),
            'senders': jnp.array([0, 1], jnp.int32), 'receivers': jnp.array([1, 0], jnp.int32),
            'n_node': jnp.array([2, 1], jnp.int32), 'n_edge': jnp.array([2, 0], jnp.int32)}

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    graph = batch_to_graph(batch, nodes=preprocess_inputs(batch['nodes'], self.info))
    return run_model(model, variables, (graph,), train, rngs, mutable, init)

  def outputs(self, logits) -> dict[str, jax.Array]:
    return {'logits': logits, 'probabilities': jax.nn.softmax(logits, axis=-1),
            'classes': jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  def export_signatures(self, model):
    """One padded graph (or batch of graphs) in jraph's arrays; node- or graph-level outputs.

    Not batchable: the server must not concatenate two requests' arrays (their indices would clash).
    """
    edge_features = int(self.info.extra.get('graph', {}).get('edge_features', 1))
    inputs = {'nodes': TensorSpec((None,) + tuple(self.info.input_shape), 'float32', finite=True),
              'edges': TensorSpec((None, edge_features), 'float32', finite=True),
              'senders': TensorSpec((None,), 'int32'), 'receivers': TensorSpec((None,), 'int32'),
              'n_node': TensorSpec((None,), 'int32'), 'n_edge': TensorSpec((None,), 'int32')}
    # Nodes, edges and graphs are three independent sizes.
    poly = {'nodes': 'n, ...', 'edges': 'e, ...', 'senders': 'e', 'receivers': 'e', 'n_node': 'g', 'n_edge': 'g'}
    serve = lambda variables, x: self.outputs(self.forward(model, variables, x, train=False))
    example = lambda batch: {k: np.asarray(batch[k]) for k in inputs}
    return {SERVING_DEFAULT: Signature(inputs, serve, example, polymorphic=poly, batchable=False, tolerance=1e-4)}


def mean_average_precision(scores_NxT: np.ndarray, labels_NxT: np.ndarray, weights_NxT: np.ndarray) -> float:
  """Mean over tasks of average precision on the measured labels, as in the OGB / Flax ogbg example.

  A task counts only where its measured labels hold both a positive and a negative.
  """
  from sklearn.metrics import average_precision_score
  aps = []
  for t in range(labels_NxT.shape[1]):
    measured = weights_NxT[:, t] > 0
    y = labels_NxT[measured, t]
    if y.size and 0 < y.sum() < y.size:
      aps.append(average_precision_score(y, scores_NxT[measured, t]))
  return float(np.mean(aps)) if aps else float('nan')


class GraphMultiLabel(GraphClassification):
  """Independent binary labels per graph, some unmeasured: masked sigmoid cross-entropy; mAP in eval."""
  name = 'graph_multilabel'
  metric_names = ('loss', 'accuracy')

  def _weights(self, batch):
    return batch['label_mask'] * batch.get('mask', jnp.ones(batch['label_mask'].shape[:1], jnp.float32))[:, None]

  def loss_and_sums(self, logits_GxT, batch):
    labels_GxT, w_GxT = batch['labels'], self._weights(batch)
    loss_GxT = optax.sigmoid_binary_cross_entropy(logits_GxT, labels_GxT)
    correct_GxT = ((logits_GxT > 0) == (labels_GxT > 0.5)).astype(jnp.float32)
    count = jnp.sum(w_GxT)  # measured labels, the unit the loss is averaged over
    sums = {'loss': jnp.sum(loss_GxT * w_GxT), 'accuracy': jnp.sum(correct_GxT * w_GxT), 'count': count}
    return sums['loss'] / jnp.maximum(count, 1.0), sums

  def eval_sums(self, logits_GxT, batch):
    # Average precision ranks every graph of the split: gather scores instead of summing.
    sums = self.loss_and_sums(logits_GxT, batch)[1]
    sums['examples'] = {'scores': logits_GxT, 'labels': batch['labels'], 'weights': self._weights(batch)}
    return sums

  def outputs(self, logits) -> dict[str, jax.Array]:
    return {'logits': logits, 'probabilities': jax.nn.sigmoid(logits)}

  def finalize(self, sums, examples=None):
    metrics = super().finalize(sums)
    if examples is not None:
      metrics['mean_average_precision'] = mean_average_precision(
          np.asarray(examples['scores']), np.asarray(examples['labels']), np.asarray(examples['weights']))
    return metrics


class NodeClassification(GraphClassification):
  """Transductive: the whole graph in every batch; the loss and metrics count the split's nodes."""
  name = 'node_classification'
