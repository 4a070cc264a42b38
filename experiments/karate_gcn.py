r"""Zachary's karate club: a 2-layer GCN predicts each member's faction from 4 labelled members per faction.

  maasjax train --config experiments/karate_gcn.py --workdir runs/karate_gcn

Transductive: the whole 34-node graph every step; train/validation/test are node masks (8 / 4 / 22
members). Expected (2-core CPU): test accuracy >= 0.9 on the 22 held-out members in seconds.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'gcn', 'hidden': (16,), 'dropout': 0.5})
  c.dataset = ml_collections.ConfigDict({
      'name': 'karate', 'train_per_class': 4, 'validation_per_class': 2, 'split_seed': 0})
  c.batch_size = 1  # the whole graph is one batch
  c.eval_batch_size = 1
  c.num_train_steps = 200
  c.optimizer.learning_rate = 1e-2
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = 'constant'
  c.log_every_steps = 20
  c.eval_every_steps = 50
  c.checkpoint.every_steps = 200
  return c
