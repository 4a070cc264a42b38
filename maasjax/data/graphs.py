"""Graph datasets in jraph's layout (`nodes, edges, senders, receivers, n_node, n_edge` + labels, mask):
karate club and a digits kNN graph (node-level, transductive masks), generated graph families and tfds
ogbg_molpcba (graph-level, padded to power-of-two buckets so jit compiles once per bucket)."""
from __future__ import annotations

import dataclasses

import jraph
import ml_collections
import numpy as np

from maasjax.config import ConfigError
from maasjax.data.base import Batch, Dataset, DatasetInfo, EpochPermutations, stream_indices
from maasjax.data.images import sklearn_digits
from maasjax.data.tfds_source import prepared_builder

GRAPH_KEYS = ('nodes', 'edges', 'senders', 'receivers', 'n_node', 'n_edge')


def batch_to_graph(batch: Batch, nodes=None) -> jraph.GraphsTuple:
  """The GraphsTuple inside a batch dict (optionally with preprocessed node features)."""
  return jraph.GraphsTuple(nodes=batch['nodes'] if nodes is None else nodes, edges=batch['edges'],
                           senders=batch['senders'], receivers=batch['receivers'], n_node=batch['n_node'],
                           n_edge=batch['n_edge'], globals=None)


def undirected(edges_Ex2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Senders and receivers with both directions of each edge (self-loops and duplicates dropped)."""
  pairs = np.concatenate([edges_Ex2, edges_Ex2[:, ::-1]]) if len(edges_Ex2) else np.zeros((0, 2), np.int64)
  pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
  return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)


def next_bucket(n: int, minimum: int) -> int:
  return max(int(minimum), 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass
class GraphStore:
  """Many graphs held as concatenated arrays plus offsets (compact for hundreds of thousands of graphs)."""
  nodes: np.ndarray  # [total nodes, F]
  edges: np.ndarray  # [total edges, Fe]
  senders: np.ndarray  # [total edges], indices local to each graph
  receivers: np.ndarray
  node_offsets: np.ndarray  # [G + 1]
  edge_offsets: np.ndarray  # [G + 1]
  targets: dict[str, np.ndarray]  # per-graph arrays, e.g. {'labels': [G]} or {'labels', 'label_mask': [G, T]}

  def __len__(self) -> int:
    return len(self.node_offsets) - 1

  @classmethod
  def from_graphs(cls, graphs: list[dict[str, np.ndarray]], targets: dict[str, np.ndarray]) -> 'GraphStore':
    """From per-graph dicts with nodes [n, F], edges [e, Fe], senders [e], receivers [e]."""
    n_node = np.array([len(g['nodes']) for g in graphs], np.int64)
    n_edge = np.array([len(g['senders']) for g in graphs], np.int64)
    cat = lambda key, dtype: np.concatenate([np.asarray(g[key], dtype) for g in graphs])
    return cls(cat('nodes', np.float32), cat('edges', np.float32), cat('senders', np.int32), cat('receivers', np.int32),
               np.concatenate([[0], np.cumsum(n_node)]), np.concatenate([[0], np.cumsum(n_edge)]), targets)

  def graph(self, i: int) -> jraph.GraphsTuple:
    n0, n1 = self.node_offsets[i], self.node_offsets[i + 1]
    e0, e1 = self.edge_offsets[i], self.edge_offsets[i + 1]
    return jraph.GraphsTuple(
        nodes=self.nodes[n0:n1], edges=self.edges[e0:e1], senders=self.senders[e0:e1],
        receivers=self.receivers[e0:e1], n_node=np.array([n1 - n0], np.int32), n_edge=np.array([e1 - e0], np.int32),
        globals={k: v[i:i + 1] for k, v in self.targets.items()})


def pad_graphs(graphs: list[jraph.GraphsTuple], num_graphs: int, min_nodes: int = 64, min_edges: int = 64) -> Batch:
  """Batches graphs and pads them to (bucket nodes, bucket edges, num_graphs + 1 graphs); mask marks real graphs."""
  g = jraph.batch_np(graphs)
  n_node = next_bucket(int(np.sum(g.n_node)) + 1, min_nodes)  # + 1: the padding graph needs a node
  n_edge = next_bucket(int(np.sum(g.n_edge)), min_edges)
  padded = jraph.pad_with_graphs(g, n_node, n_edge, num_graphs + 1)
  mask = np.zeros(num_graphs + 1, np.float32)
  mask[:len(graphs)] = 1.0
  batch = {'nodes': padded.nodes.astype(np.float32), 'edges': padded.edges.astype(np.float32),
           'senders': padded.senders.astype(np.int32), 'receivers': padded.receivers.astype(np.int32),
           'n_node': padded.n_node.astype(np.int32), 'n_edge': padded.n_edge.astype(np.int32), 'mask': mask}
  batch.update(padded.globals)
  return batch


class GraphBatchDataset(Dataset):
  """Graph-level data: each batch is `batch_size` graphs, padded (see `pad_graphs`).

  The task replicates graph batches (they do not split along axis 0), so every process builds the
  whole global batch: `process_index` and `process_count` are accepted and ignored.
  """

  def __init__(self, info: DatasetInfo, splits: dict[str, GraphStore], seed: int, min_nodes: int = 64,
               min_edges: int = 64):
    self.info, self._splits, self._seed = info, splits, seed
    self._min = (min_nodes, min_edges)
    self._permutations = EpochPermutations(seed, len(splits['train'])) if 'train' in splits else None

  def splits(self) -> list[str]:
    return list(self._splits)

  def batch_of(self, split: str, indices, batch_size: int) -> Batch:
    store = self._splits[split]
    return pad_graphs([store.graph(int(i)) for i in indices], batch_size, *self._min)

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    idx = stream_indices(self._seed, step, batch_size, len(self._splits['train']), self._permutations)
    return self.batch_of('train', idx, batch_size)

  def eval_batches(self, split, batch_size, process_index=0, process_count=1):
    n = len(self._splits[split])
    for start in range(0, n, batch_size):
      yield self.batch_of(split, range(start, min(start + batch_size, n)), batch_size)


class WholeGraphDataset(Dataset):
  """Transductive node-level data: one graph; a split is a node mask (train, validation, test)."""

  def __init__(self, info: DatasetInfo, graph: dict[str, np.ndarray], labels_N: np.ndarray,
               masks: dict[str, np.ndarray]):
    self.info = info
    n = len(graph['nodes'])
    edges = graph.get('edges')
    self._graph = {
        'nodes': np.asarray(graph['nodes'], np.float32),
        'edges': np.ones((len(graph['senders']), 1), np.float32) if edges is None else np.asarray(edges, np.float32),
        'senders': np.asarray(graph['senders'], np.int32), 'receivers': np.asarray(graph['receivers'], np.int32),
        'n_node': np.array([n], np.int32), 'n_edge': np.array([len(graph['senders'])], np.int32),
        'labels': np.asarray(labels_N, np.int32)}
    self._masks = {k: np.asarray(v, np.float32) for k, v in masks.items()}

  def splits(self) -> list[str]:
    return list(self._masks)

  def batch(self, split: str) -> Batch:
    return dict(self._graph, mask=self._masks[split])

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    return self.batch('train')

  def eval_batches(self, split, batch_size, process_index=0, process_count=1):
    yield self.batch(split)


def per_class_split(labels_N: np.ndarray, counts: dict[str, int], seed: int) -> dict[str, np.ndarray]:
  """Node masks: `counts[split]` seeded nodes of each class per split; the last split takes the rest."""
  rng = np.random.default_rng(seed)
  masks = {name: np.zeros(len(labels_N), np.float32) for name in counts}
  names = list(counts)
  for c in np.unique(labels_N):
    members = rng.permutation(np.flatnonzero(labels_N == c))
    start = 0
    for name in names[:-1]:
      take = members[start:start + counts[name]]
      if len(take) < counts[name]:
        raise ConfigError(f'class {c} has {len(members)} nodes, too few for {counts} labelled per class')
      masks[name][take] = 1.0
      start += counts[name]
    masks[names[-1]][members[start:]] = 1.0
  return masks


def _node_info(name: str, num_features: int, label_names: list[str], masks, std: float = 1.0) -> DatasetInfo:
  return DatasetInfo(name=name, task='node_classification', input_shape=(num_features,), input_dtype='float32',
                     num_classes=len(label_names), label_names=label_names,
                     num_examples={k: int(v.sum()) for k, v in masks.items()}, input_std=[std],
                     extra={'graph': {'level': 'node', 'edge_features': 1}})


def load_karate(cfg: ml_collections.ConfigDict, seed: int) -> WholeGraphDataset:
  """Zachary's karate club (networkx): 34 members, 2 factions; one-hot identity node features."""
  import networkx as nx
  g = nx.karate_club_graph()
  names = ['Mr. Hi', 'Officer']
  labels = np.array([names.index(g.nodes[i]['club']) for i in range(g.number_of_nodes())], np.int32)
  senders, receivers = undirected(np.array(g.edges(), np.int64))
  masks = per_class_split(labels, {'train': int(cfg.get('train_per_class', 4)),
                                   'validation': int(cfg.get('validation_per_class', 2)), 'test': 0},
                          int(cfg.get('split_seed', 0)))
  nodes = np.eye(len(labels), dtype=np.float32)
  info = _node_info('karate', len(labels), names, masks)
  return WholeGraphDataset(info, {'nodes': nodes, 'senders': senders, 'receivers': receivers}, labels, masks)


def load_digits_knn(cfg: ml_collections.ConfigDict, seed: int) -> WholeGraphDataset:
  """scikit-learn's digits as one k-nearest-neighbour graph (symmetrised); few labels per class."""
  from sklearn.neighbors import NearestNeighbors
  images, targets = sklearn_digits()
  x = images.reshape(len(images), -1).astype(np.float32)  # (1797, 64), intensities 0..16
  labels = targets.astype(np.int32)
  k = int(cfg.get('num_neighbors', 10))
  if k < 1:
    raise ConfigError(f'config.dataset.num_neighbors={k}: expected an integer >= 1')
  _, nbrs = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)  # column 0 is the point itself
  pairs = np.stack([np.repeat(np.arange(len(x)), k), nbrs[:, 1:].reshape(-1)], axis=1)
  senders, receivers = undirected(pairs)
  masks = per_class_split(labels, {'train': int(cfg.get('train_per_class', 10)),
                                   'validation': int(cfg.get('validation_per_class', 10)), 'test': 0},
                          int(cfg.get('split_seed', 0)))
  info = _node_info('digits_knn', x.shape[1], [str(i) for i in range(10)], masks, std=16.0)
  return WholeGraphDataset(info, {'nodes': x, 'senders': senders, 'receivers': receivers}, labels, masks)


GRAPH_FAMILIES = ('erdos_renyi', 'barabasi_albert', 'watts_strogatz', 'random_geometric')


def _family_graph(family: str, n: int, rng: np.random.Generator):
  import networkx as nx
  s = int(rng.integers(2**31))
  if family == 'erdos_renyi':
    return nx.gnp_random_graph(n, 4.0 / (n - 1), seed=s)
  if family == 'barabasi_albert':
    return nx.barabasi_albert_graph(n, 2, seed=s)
  if family == 'watts_strogatz':
    return nx.watts_strogatz_graph(n, 4, 0.2, seed=s)
  return nx.random_geometric_graph(n, float(np.sqrt(4.0 / (np.pi * n))), seed=s)  # expected degree ~4


def degree_features(senders: np.ndarray, n: int, max_degree: int) -> np.ndarray:
  """One-hot node degree, capped at `max_degree` (structure is all these graphs have)."""
  deg = np.minimum(np.bincount(senders, minlength=n), max_degree)
  return np.eye(max_degree + 1, dtype=np.float32)[deg]


def load_graph_families(cfg: ml_collections.ConfigDict, seed: int) -> GraphBatchDataset:
  """Generated graph classification: which random-graph model (ER, BA, WS, geometric) made each graph."""
  sizes = {'train': int(cfg.get('num_train', 2000)), 'validation': int(cfg.get('num_validation', 300)),
           'test': int(cfg.get('num_test', 500))}
  lo, hi = int(cfg.get('min_nodes', 12)), int(cfg.get('max_nodes', 40))
  max_degree = int(cfg.get('max_degree', 12))
  if not 4 < lo <= hi:
    raise ConfigError(f'config.dataset.min_nodes={lo}, max_nodes={hi}: expected 4 < min_nodes <= max_nodes')
  # A fixed generator seed (not config.seed): every run is scored on the same graphs.
  rng = np.random.default_rng(int(cfg.get('generator_seed', 0)))
  splits = {}
  for split, count in sizes.items():
    graphs, labels = [], rng.integers(len(GRAPH_FAMILIES), size=count).astype(np.int32)
    for label in labels:
      n = int(rng.integers(lo, hi + 1))
      g = _family_graph(GRAPH_FAMILIES[label], n, rng)
      senders, receivers = undirected(np.array(g.edges(), np.int64).reshape(-1, 2))
      graphs.append({'nodes': degree_features(senders, n, max_degree), 'senders': senders, 'receivers': receivers,
                     'edges': np.ones((len(senders), 1), np.float32)})
    splits[split] = GraphStore.from_graphs(graphs, {'labels': labels})
  info = DatasetInfo(name='graph_families', task='graph_classification', input_shape=(max_degree + 1,),
                     input_dtype='float32', num_classes=len(GRAPH_FAMILIES), label_names=list(GRAPH_FAMILIES),
                     num_examples=sizes, extra={'graph': {'level': 'graph', 'edge_features': 1},
                                                'model_fields': {'readout': 'mean'}})
  return GraphBatchDataset(info, splits, seed)


def ogbg_store(examples) -> GraphStore:
  """tfds ogbg_molpcba examples -> a GraphStore; NaN labels (unmeasured assays) become label_mask 0."""
  graphs, labels = [], []
  for ex in examples:
    senders, receivers = (np.asarray(ex['edge_index'], np.int64).reshape(-1, 2).T if len(ex['edge_index'])
                          else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    edges = np.asarray(ex['edge_feat'], np.float32).reshape(-1, 3)
    # Molecule bonds are stored once: add the reverse direction, as the Flax example does.
    graphs.append({'nodes': np.asarray(ex['node_feat'], np.float32), 'edges': np.concatenate([edges, edges]),
                   'senders': np.concatenate([senders, receivers]), 'receivers': np.concatenate([receivers, senders])})
    labels.append(np.asarray(ex['labels'], np.float32))
  y = np.stack(labels) if labels else np.zeros((0, 128), np.float32)
  measured = ~np.isnan(y)
  return GraphStore.from_graphs(graphs, {'labels': np.where(measured, y, 0.0).astype(np.float32),
                                         'label_mask': measured.astype(np.float32)})


def load_ogbg_molpcba(cfg: ml_collections.ConfigDict, seed: int) -> GraphBatchDataset:
  """tfds ogbg_molpcba (437,929 molecules, 128 binary assays, many unmeasured): the Flax example's task."""
  import tensorflow_datasets as tfds
  builder = prepared_builder('ogbg_molpcba', cfg, 'graph')
  datasets = {split: builder.as_dataset(split=split) for split in ('train', 'validation', 'test')}
  splits = {split: ogbg_store(tfds.as_numpy(ds)) for split, ds in datasets.items()}
  for split, store in splits.items():
    n_node_per_edge = np.repeat(np.diff(store.node_offsets), np.diff(store.edge_offsets))
    ends = np.concatenate([store.senders, store.receivers])
    if np.any((ends < 0) | (ends >= np.concatenate([n_node_per_edge, n_node_per_edge]))):
      raise ConfigError(f'ogbg_molpcba {split}: an edge points outside its graph; the prepared data is corrupt')
  info = DatasetInfo(name='ogbg_molpcba', task='graph_multilabel', input_shape=(9,), input_dtype='float32',
                     num_classes=128, label_names=[f'assay_{i}' for i in range(128)],
                     num_examples={k: len(v) for k, v in splits.items()},
                     extra={'graph': {'level': 'graph', 'edge_features': 3}, 'model_fields': {'readout': 'mean'}})
  return GraphBatchDataset(info, splits, seed, min_nodes=int(cfg.get('min_bucket_nodes', 64)),
                           min_edges=int(cfg.get('min_bucket_edges', 64)))
