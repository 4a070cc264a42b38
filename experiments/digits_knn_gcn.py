r"""Semi-supervised digits: a GCN over a 10-nearest-neighbour graph of the 1,797 digits, 10 labels per class.

  maasjax train --config experiments/digits_knn_gcn.py --workdir runs/digits_knn_gcn

Transductive: the whole graph every step; 100 labelled training nodes, 100 validation nodes, and the
other 1,597 digits are the test set. Expected (2-core CPU): test accuracy >= 0.9 in under a minute.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'gcn', 'hidden': (64,), 'dropout': 0.5})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits_knn', 'num_neighbors': 10, 'train_per_class': 10, 'validation_per_class': 10,
      'split_seed': 0})
  c.batch_size = 1  # the whole graph is one batch
  c.eval_batch_size = 1
  c.num_train_steps = 300
  c.optimizer.learning_rate = 1e-2
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = 'constant'
  c.log_every_steps = 25
  c.eval_every_steps = 100
  c.checkpoint.every_steps = 300
  return c
