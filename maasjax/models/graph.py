"""GCN (Kipf & Welling 2017) and GAT (Velickovic et al. 2018) on `jraph.GraphsTuple`, with logits per node
(readout='none') or per graph (mean/sum/max readout). Padding graphs from jraph.pad_with_graphs hold
their own nodes and edges, so they never reach a real node's output."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

READOUTS = ('none', 'mean', 'sum', 'max')


def with_self_loops(senders_E, receivers_E, num_nodes: int):
  loops_N = jnp.arange(num_nodes, dtype=jnp.int32)
  return (jnp.concatenate([senders_E.astype(jnp.int32), loops_N]),
          jnp.concatenate([receivers_E.astype(jnp.int32), loops_N]))


def gcn_edge_weights(senders_E, receivers_E, num_nodes: int):
  """1/sqrt(deg(s) deg(r)) per edge, degrees counted over the given edges (both directions stored)."""
  deg_N = jax.ops.segment_sum(jnp.ones(receivers_E.shape, jnp.float32), receivers_E, num_nodes)
  inv_sqrt_N = jax.lax.rsqrt(jnp.maximum(deg_N, 1.0))  # isolated nodes (no self-loop) keep weight 0 sums
  return inv_sqrt_N[senders_E] * inv_sqrt_N[receivers_E]


class GCNLayer(nn.Module):
  """H' = D^-1/2 (A + I) D^-1/2 H W (+ b): messages along edges, summed at receivers."""
  features: int
  add_self_loops: bool = True
  use_bias: bool = True
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, nodes_NxF, senders_E, receivers_E):
    n = nodes_NxF.shape[0]
    h_NxD = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name='linear')(nodes_NxF)
    if self.add_self_loops:
      senders_E, receivers_E = with_self_loops(senders_E, receivers_E, n)
    w_E = gcn_edge_weights(senders_E, receivers_E, n).astype(h_NxD.dtype)
    out_NxD = jax.ops.segment_sum(h_NxD[senders_E] * w_E[:, None], receivers_E, n)
    if self.use_bias:
      out_NxD = out_NxD + self.param('bias', nn.initializers.zeros, (self.features,)).astype(out_NxD.dtype)[None]
    return out_NxD


class GATLayer(nn.Module):
  """Multi-head graph attention: softmax over each node's incoming edges (self-loop included)."""
  features: int  # per head
  num_heads: int = 4
  concat_heads: bool = True  # concatenate heads (hidden layers) or average them (output layer)
  negative_slope: float = 0.2
  attention_dropout: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, nodes_NxF, senders_E, receivers_E, train: bool = False):
    n = nodes_NxF.shape[0]
    h_NxHxD = nn.DenseGeneral((self.num_heads, self.features), use_bias=False, dtype=self.dtype,
                              name='linear')(nodes_NxF)
    a_src_HxD = self.param('attention_source', nn.initializers.glorot_uniform(), (self.num_heads, self.features))
    a_dst_HxD = self.param('attention_target', nn.initializers.glorot_uniform(), (self.num_heads, self.features))
    senders_E, receivers_E = with_self_loops(senders_E, receivers_E, n)
    score_src_NxH = jnp.sum(h_NxHxD * a_src_HxD[None].astype(h_NxHxD.dtype), axis=-1)
    score_dst_NxH = jnp.sum(h_NxHxD * a_dst_HxD[None].astype(h_NxHxD.dtype), axis=-1)
    logits_ExH = nn.leaky_relu(score_src_NxH[senders_E] + score_dst_NxH[receivers_E], self.negative_slope)
    alpha_ExH = jraph.segment_softmax(logits_ExH.astype(jnp.float32), receivers_E, n)
    alpha_ExH = nn.Dropout(self.attention_dropout, deterministic=not train)(alpha_ExH)
    msg_ExHxD = h_NxHxD[senders_E] * alpha_ExH[..., None].astype(h_NxHxD.dtype)
    out_NxHxD = jax.ops.segment_sum(msg_ExHxD, receivers_E, n)
    if self.concat_heads:
      out = jnp.reshape(out_NxHxD, (n, self.num_heads * self.features))
    else:
      out = jnp.mean(out_NxHxD, axis=1)
    return out + self.param('bias', nn.initializers.zeros, (out.shape[-1],)).astype(out.dtype)[None]


def graph_readout(h_NxD, n_node_G, kind: str):
  """Pools node states into one vector per graph (padding graphs get their own row)."""
  num_graphs, n = n_node_G.shape[0], h_NxD.shape[0]
  graph_idx_N = jnp.repeat(jnp.arange(num_graphs), n_node_G, total_repeat_length=n)
  if kind == 'max':
    pooled = jax.ops.segment_max(h_NxD, graph_idx_N, num_graphs)
    return jnp.where(jnp.isfinite(pooled), pooled, 0.0)  # empty graphs: 0, not -inf
  total_GxD = jax.ops.segment_sum(h_NxD, graph_idx_N, num_graphs)
  if kind == 'sum':
    return total_GxD
  return total_GxD / jnp.maximum(n_node_G, 1).astype(total_GxD.dtype)[:, None]


class GraphModel(nn.Module):
  """Shared stack: input embedding, message-passing layers with dropout, node or graph head."""
  num_classes: int
  hidden: Sequence[int] = (64,)
  dropout: float = 0.5
  readout: str = 'none'  # 'none': logits per node; 'mean' | 'sum' | 'max': logits per graph
  embed_dim: int = 0  # > 0: a Dense embedding of the input node features first (e.g. molecules)
  dtype: str = 'float32'

  def layer(self, features: int, final: bool, index: int) -> nn.Module:
    raise NotImplementedError

  def apply_layer(self, layer, h, graph, train):
    return layer(h, graph.senders, graph.receivers)

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, train: bool = False):
    h = graph.nodes.astype(self.dtype)
    if self.embed_dim:
      h = nn.Dense(self.embed_dim, dtype=self.dtype, name='embed')(h)
    node_level = self.readout == 'none'
    widths = list(self.hidden) + ([self.num_classes] if node_level else [])
    for i, width in enumerate(widths):
      final = node_level and i == len(widths) - 1
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
      h = self.apply_layer(self.layer(width, final, i), h, graph, train)
      if not final:
        h = nn.relu(h)
    if node_level:
      return h.astype(jnp.float32)
    pooled_GxD = graph_readout(h, graph.n_node, self.readout)
    pooled_GxD = nn.Dropout(self.dropout, deterministic=not train)(pooled_GxD)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(pooled_GxD).astype(jnp.float32)


class GCN(GraphModel):
  add_self_loops: bool = True

  def layer(self, features, final, index):
    return GCNLayer(features, add_self_loops=self.add_self_loops, dtype=self.dtype, name=f'gcn_{index}')


class GAT(GraphModel):
  num_heads: int = 4
  attention_dropout: float = 0.0

  def layer(self, features, final, index):
    # Hidden layers: `features` split over concatenated heads; the output layer averages full-width heads.
    per_head = features if final else max(1, features // self.num_heads)
    return GATLayer(per_head, self.num_heads, concat_heads=not final, attention_dropout=self.attention_dropout,
                    dtype=self.dtype, name=f'gat_{index}')

  def apply_layer(self, layer, h, graph, train):
    return layer(h, graph.senders, graph.receivers, train=train)
