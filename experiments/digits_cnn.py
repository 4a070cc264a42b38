r"""The default experiment: the classic MNIST CNN on scikit-learn's embedded 8x8 digits.

  maasjax train --config experiments/digits_cnn.py --workdir runs/digits_cnn

Expected (2-core CPU): test accuracy >= 0.985 on the 359 held-out digits in well under a minute.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'cnn', 'features': (32, 64), 'dense': 256, 'dropout': 0.1})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits', 'normalize': 'standard', 'validation_fraction': 0.1, 'test_fraction': 0.2,
      'split_seed': 0, 'augment': {'random_shift': 1, 'horizontal_flip': False}})
  c.batch_size = 64
  c.num_train_steps = 1500
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.checkpoint.every_steps = 500
  return c
