r"""An MLP on the embedded 8x8 digits.

  maasjax train --config experiments/digits_mlp.py --workdir runs/digits_mlp
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'mlp', 'hidden': (256, 256), 'dropout': 0.1})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits', 'normalize': 'standard', 'validation_fraction': 0.1, 'test_fraction': 0.2,
      'split_seed': 0, 'augment': {'random_shift': 0, 'horizontal_flip': False}})
  c.batch_size = 64
  c.num_train_steps = 1000
  c.optimizer.learning_rate = 1e-3
  return c
