r"""An LSTM reads each 8x8 digit as a sequence of 8 rows (8 pixels per step) and classifies it.

  maasjax train --config experiments/digits_lstm.py --workdir runs/digits_lstm

Same data and split as experiments/digits_cnn.py (scikit-learn's digits; 360 held-out test digits).
A GRU instead: --config.model.name=gru. Expected (2-core CPU): test accuracy >= 0.95 in about a minute.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'lstm', 'hidden': (128,), 'bidirectional': False, 'dropout': 0.1})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits', 'normalize': 'standard', 'validation_fraction': 0.1, 'test_fraction': 0.2,
      'split_seed': 0})
  c.batch_size = 64
  c.num_train_steps = 1500
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint.every_steps = 500
  return c
