"""GCN and GAT layers against dense references; padding invariance; readouts."""
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from maasjax.data.graphs import pad_graphs, undirected
from maasjax.models.graph import GAT, GCN, GATLayer, GCNLayer, graph_readout

# A 5-node graph: a triangle 0-1-2, a tail 2-3, and node 4 isolated.
EDGES = np.array([[0, 1], [1, 2], [0, 2], [2, 3]])
SENDERS, RECEIVERS = undirected(EDGES)
N = 5


def dense_adjacency() -> np.ndarray:
  a = np.zeros((N, N), np.float32)
  a[RECEIVERS, SENDERS] = 1.0
  return a


def test_gcn_layer_matches_dense_kipf_welling():
  x_NxF = np.random.default_rng(0).normal(size=(N, 3)).astype(np.float32)
  layer = GCNLayer(4)
  params = layer.init(jax.random.key(0), x_NxF, SENDERS, RECEIVERS)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  out = layer.apply(params, x_NxF, SENDERS, RECEIVERS)
  a_hat = dense_adjacency() + np.eye(N, dtype=np.float32)
  d_inv_sqrt = np.diag(1.0 / np.sqrt(a_hat.sum(axis=1)))
  w, b = np.asarray(params['params']['linear']['kernel']), np.asarray(params['params']['bias'])
  expected = d_inv_sqrt @ a_hat @ d_inv_sqrt @ x_NxF @ w + b
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # The isolated node sees only itself: its output is x W + b.
  np.testing.assert_allclose(out[4], x_NxF[4] @ w + b, rtol=1e-5, atol=1e-5)


def test_gat_layer_matches_dense_attention():
  x_NxF = np.random.default_rng(1).normal(size=(N, 3)).astype(np.float32)
  layer = GATLayer(features=2, num_heads=3, concat_heads=True)
  params = layer.init(jax.random.key(1), x_NxF, SENDERS, RECEIVERS)
  out = np.asarray(layer.apply(params, x_NxF, SENDERS, RECEIVERS))
  p = jax.tree.map(np.asarray, params['params'])
  h_NxHxD = np.einsum('nf,fhd->nhd', x_NxF, p['linear']['kernel'])
  src_NxH = (h_NxHxD * p['attention_source'][None]).sum(-1)
  dst_NxH = (h_NxHxD * p['attention_target'][None]).sum(-1)
  neighbours = dense_adjacency() + np.eye(N)  # [receiver, sender]
  expected = np.zeros((N, 3, 2), np.float32)
  for i in range(N):
    for head in range(3):
      e = src_NxH[:, head] + dst_NxH[i, head]
      e = np.where(e > 0, e, 0.2 * e)
      w = np.where(neighbours[i] > 0, np.exp(e - e.max()), 0.0)
      expected[i, head] = (w / w.sum()) @ h_NxHxD[:, head]
  np.testing.assert_allclose(out, expected.reshape(N, 6) + p['bias'], rtol=1e-5, atol=1e-5)


def _graph(n, edges, feat_seed):
  s, r = undirected(np.asarray(edges))
  x = np.random.default_rng(feat_seed).normal(size=(n, 3)).astype(np.float32)
  return jraph.GraphsTuple(nodes=x, edges=np.ones((len(s), 1), np.float32), senders=s, receivers=r,
                           n_node=np.array([n], np.int32), n_edge=np.array([len(s)], np.int32),
                           globals={'labels': np.array([0], np.int32)})


@pytest.mark.parametrize('model', [GCN(num_classes=3, hidden=(8, 8)), GAT(num_classes=3, hidden=(8,)),
                                   GCN(num_classes=3, hidden=(8,), readout='mean'),
                                   GAT(num_classes=3, hidden=(8,), readout='max'),
                                   GCN(num_classes=3, hidden=(8,), readout='sum')],
                         ids=['gcn-node', 'gat-node', 'gcn-mean', 'gat-max', 'gcn-sum'])
def test_padding_does_not_change_real_outputs(model):
  graphs = [_graph(5, EDGES, 0), _graph(3, [[0, 1], [1, 2]], 1)]
  tight = jraph.batch_np(graphs)
  padded = jraph.pad_with_graphs(tight, n_node=32, n_edge=64, n_graph=6)
  # Padding node features must not leak either: make them large.
  padded = padded._replace(nodes=np.concatenate([padded.nodes[:8], np.full((24, 3), 50.0, np.float32)]))
  params = jax.jit(model.init)(jax.random.key(0), tight)
  apply = jax.jit(model.apply)
  out_tight = apply(params, tight)
  out_padded = apply(params, padded)
  real = out_tight.shape[0]  # 8 nodes, or 2 graphs
  np.testing.assert_allclose(out_padded[:real], out_tight, rtol=1e-5, atol=1e-5)
  # And each graph alone gives what it gives in the batch: graphs do not see each other.
  alone = apply(params, graphs[1])
  np.testing.assert_allclose(out_tight[5:] if model.readout == 'none' else out_tight[1:], alone, rtol=1e-5, atol=1e-5)


def test_pad_graphs_buckets_and_mask():
  graphs = [_graph(5, EDGES, 0), _graph(3, [[0, 1], [1, 2]], 1), _graph(40, [[i, i + 1] for i in range(39)], 2)]
  batch = pad_graphs(graphs, num_graphs=4, min_nodes=16, min_edges=16)
  assert batch['nodes'].shape == (64, 3)  # 48 real + 1 padding node -> the next power of two
  assert batch['senders'].shape == (128,)  # 8 + 4 + 78 edges -> 128
  assert batch['n_node'].shape == (5,)  # num_graphs + the padding graph
  np.testing.assert_array_equal(batch['mask'], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(batch['n_node'][:3], [5, 3, 40])
  assert batch['n_node'].sum() == 64 and batch['n_edge'].sum() == 128
  # Padding edges connect padding nodes only.
  assert (batch['senders'][90:] >= 48).all() and (batch['receivers'][90:] >= 48).all()
  np.testing.assert_array_equal(batch['labels'], [0, 0, 0, 0, 0])
  small = pad_graphs(graphs[:2], num_graphs=4, min_nodes=16, min_edges=16)
  assert small['nodes'].shape == (16, 3) and small['senders'].shape == (16,)


def test_readouts_on_empty_graphs():
  h_NxD = jnp.arange(12.0).reshape(6, 2)
  n_node_G = jnp.array([2, 4, 0])
  np.testing.assert_allclose(graph_readout(h_NxD, n_node_G, 'sum'), [[2, 4], [28, 32], [0, 0]])
  np.testing.assert_allclose(graph_readout(h_NxD, n_node_G, 'mean'), [[1, 2], [7, 8], [0, 0]])
  np.testing.assert_allclose(graph_readout(h_NxD, n_node_G, 'max'), [[2, 3], [10, 11], [0, 0]])
