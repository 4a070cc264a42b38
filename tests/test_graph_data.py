"""Graph datasets, tasks and configs: karate, digits kNN, graph families, ogbg_molpcba under tfds mock data."""
import zlib

import jax
import ml_collections
import numpy as np
import pytest

from conftest import experiment_config
from maasjax.config import ConfigError
from maasjax.data import load_dataset
from maasjax.data.graphs import load_digits_knn, load_graph_families, load_karate
from maasjax.train.graph_tasks import mean_average_precision
from maasjax.train.loop import setup, train_and_evaluate


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_karate_graph_and_split_masks():
  ds = load_karate(_cfg(train_per_class=4, validation_per_class=2), seed=0)
  b = ds.train_batch(0, 1)
  assert b['nodes'].shape == (34, 34) and b['senders'].shape == (156,)  # 78 friendships, both directions
  pairs = set(zip(b['senders'].tolist(), b['receivers'].tolist()))
  assert all((r, s) in pairs for s, r in pairs)  # undirected
  masks = {s: next(ds.eval_batches(s, 1))['mask'] for s in ('train', 'validation', 'test')}
  np.testing.assert_array_equal(masks['train'] + masks['validation'] + masks['test'], np.ones(34))
  for split, per_class in (('train', 4), ('validation', 2)):
    assert [int(masks[split][b['labels'] == c].sum()) for c in (0, 1)] == [per_class, per_class]
  assert ds.info.num_examples == {'train': 8, 'validation': 4, 'test': 22}
  # The instructor (0) and the administrator (33) lead the two factions.
  assert b['labels'][0] == 0 and b['labels'][33] == 1


def test_digits_knn_graph():
  ds = load_digits_knn(_cfg(num_neighbors=5, train_per_class=10, validation_per_class=10), seed=0)
  b = ds.train_batch(0, 1)
  n = b['nodes'].shape[0]
  assert n == 1797 and ds.info.num_examples == {'train': 100, 'validation': 100, 'test': 1597}
  degree = np.bincount(b['receivers'], minlength=n)
  assert degree.min() >= 5  # each digit keeps at least its own 5 neighbours after symmetrising
  # Neighbours mostly share the label: the graph carries the signal label propagation uses.
  assert np.mean(b['labels'][b['senders']] == b['labels'][b['receivers']]) > 0.95
  with pytest.raises(ConfigError, match='too few'):
    load_digits_knn(_cfg(train_per_class=150, validation_per_class=50), seed=0)


def test_graph_families_batches_are_deterministic_and_bucketed():
  cfg = _cfg(num_train=64, num_validation=16, num_test=16, min_nodes=12, max_nodes=40)
  ds = load_graph_families(cfg, seed=3)
  again = load_graph_families(cfg, seed=3)
  a, b = ds.train_batch(5, 8), again.train_batch(5, 8)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(ds.train_batch(6, 8)['n_node'], a['n_node'])
  shapes = {ds.train_batch(s, 8)['nodes'].shape for s in range(40)}
  assert len(shapes) <= 2 and all(n & (n - 1) == 0 for n, _ in shapes)  # power-of-two buckets
  evals = list(ds.eval_batches('test', 6))
  assert [int(e['mask'].sum()) for e in evals] == [6, 6, 4]
  assert all(e['n_node'].shape == (7,) for e in evals)
  # Degree one-hot features agree with the edges.
  deg = np.bincount(a['receivers'], minlength=a['nodes'].shape[0])[:a['n_node'][:8].sum()]
  np.testing.assert_array_equal(np.argmax(a['nodes'][:len(deg)], axis=1), np.minimum(deg, 12))


def test_karate_gcn_config_learns(tmp_path):
  summary = train_and_evaluate(experiment_config('karate_gcn'), str(tmp_path))
  assert summary['test/accuracy'] >= 0.9


def test_digits_knn_gcn_config_learns(tmp_path):
  config = experiment_config('digits_knn_gcn', num_train_steps=150)
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary['test/accuracy'] >= 0.9


@pytest.mark.parametrize('name,overrides', [
    ('graph_families_gcn', {}), ('digits_knn_gat', {})])
def test_graph_configs_train_a_few_steps(tmp_path, name, overrides):
  config = experiment_config(name, num_train_steps=4, log_every_steps=2, eval_every_steps=4, **overrides)
  if config.dataset.name == 'graph_families':
    config.dataset.update(num_train=32, num_validation=8, num_test=8)
    config.batch_size, config.eval_batch_size = 8, 8
  summary = train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(summary['test/loss']) and 0.0 <= summary['test/accuracy'] <= 1.0
  assert summary['steps'] == 4


def test_mean_average_precision_by_hand():
  scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.1, 0.4], [0.1, 0.7, 0.3]])
  labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]], np.float32)
  weights = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], np.float32)
  # Task 0: ranked 0.9(+), 0.8(-), 0.1(+): AP = (1/1 + 2/3) / 2. Task 1: 0.7(-), 0.2(+), 0.1(+): (1/2 + 2/3) / 2.
  # Task 2: measured 0.5(-), 0.3(+): AP = 1/2.
  expected = np.mean([(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2, 1 / 2])
  assert mean_average_precision(scores, labels, weights) == pytest.approx(expected)
  # A task whose measured labels are all one class is skipped, not scored as 0 or 1.
  weights[:, 2] = [1, 1, 0]
  assert mean_average_precision(scores, labels, weights) == pytest.approx(np.mean([(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2]))


def _molecules(self, split, decoders=None, read_config=None, shuffle_files=False):
  """Valid random molecules for tfds.testing.mock_data (its default records are not graphs)."""
  import tensorflow as tf

  def gen():
    rng = np.random.default_rng(zlib.crc32(str(split).encode()))
    for _ in range(20):
      n = int(rng.integers(2, 10))
      e = int(rng.integers(1, 2 * n))
      labels = rng.integers(0, 2, size=128).astype(np.float32)
      labels[rng.random(128) < 0.6] = np.nan
      yield {'node_feat': rng.integers(0, 5, size=(n, 9)).astype(np.float32),
             'edge_feat': rng.integers(0, 3, size=(e, 3)).astype(np.float32),
             'edge_index': rng.integers(0, n, size=(e, 2)).astype(np.int64), 'labels': labels,
             'num_nodes': np.array([n], np.int64), 'num_edges': np.array([e], np.int64)}

  sig = {'node_feat': tf.TensorSpec((None, 9), tf.float32), 'edge_feat': tf.TensorSpec((None, 3), tf.float32),
         'edge_index': tf.TensorSpec((None, 2), tf.int64), 'labels': tf.TensorSpec((128,), tf.float32),
         'num_nodes': tf.TensorSpec((None,), tf.int64), 'num_edges': tf.TensorSpec((None,), tf.int64)}
  return tf.data.Dataset.from_generator(gen, output_signature=sig)


@pytest.mark.slow
def test_ogbg_molpcba_pipeline_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  config = experiment_config('ogbg_molpcba_gcn', num_train_steps=3, log_every_steps=3, eval_every_steps=3,
                             batch_size=8, eval_batch_size=8)
  config.model.hidden, config.model.embed_dim = (16, 16), 16
  config.dataset.min_bucket_nodes, config.dataset.min_bucket_edges = 16, 16
  config.optimizer.warmup_steps = 0
  with tfds.testing.mock_data(as_dataset_fn=_molecules):
    exp = setup(config)
    batch = exp.dataset.train_batch(0, 8)
    summary = train_and_evaluate(config, str(tmp_path))
  assert exp.task.name == 'graph_multilabel' and exp.dataset.info.num_examples['test'] == 20
  # Bonds are stored once in the record and both ways in the batch; unmeasured assays are masked out.
  real = int(batch['n_edge'][:8].sum())
  pairs = np.stack([batch['senders'][:real], batch['receivers'][:real]], axis=1)
  np.testing.assert_array_equal(np.unique(pairs, axis=0), np.unique(pairs[:, ::-1], axis=0))
  assert batch['labels'].shape == batch['label_mask'].shape == (9, 128)
  assert 0.3 < batch['label_mask'][:8].mean() < 0.5 and batch['label_mask'][8].sum() == 0
  assert not np.isnan(batch['labels']).any()
  assert 0.0 <= summary['test/mean_average_precision'] <= 1.0
  assert np.isfinite(summary['test/loss'])
  # The loss is the masked BCE: check one batch against numpy.
  state = exp.steps.init()
  logits = np.asarray(jax.jit(lambda s, b: exp.task.forward(exp.model, {'params': s.params}, b, train=False))(
      state, batch))
  w = batch['label_mask'] * batch['mask'][:, None]
  bce = np.maximum(logits, 0) - logits * batch['labels'] + np.log1p(np.exp(-np.abs(logits)))
  loss, _ = exp.task.loss_and_sums(logits, batch)
  assert float(loss) == pytest.approx(float((bce * w).sum() / w.sum()), rel=1e-5)


def test_ogbg_molpcba_rejects_invalid_graphs():
  """tfds's default mock records are random numbers, not graphs: the loader says so instead of training."""
  import tensorflow_datasets as tfds
  config = experiment_config('ogbg_molpcba_gcn')
  with tfds.testing.mock_data(num_examples=4), pytest.raises(ConfigError, match='outside its graph'):
    load_dataset(config)
