r"""A Transformer encoder classifies each 8x8 digit read as a sequence of 8 rows (a token per row).

  maasjax train --config experiments/digits_transformer.py --workdir runs/digits_transformer

Same data and split as experiments/digits_cnn.py and digits_lstm.py; rows are projected to the model
width, with learned positions and mean pooling. Expected (2-core CPU): test accuracy ~0.97.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_classifier', 'num_layers': 2, 'num_heads': 4, 'emb_dim': 64, 'mlp_dim': 128,
      'dropout': 0.1, 'attention_dropout': 0.0, 'positions': 'learned', 'max_len': 8, 'remat': False})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits', 'normalize': 'standard', 'validation_fraction': 0.1, 'test_fraction': 0.2,
      'split_seed': 0})
  c.batch_size = 64
  c.num_train_steps = 1500
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint.every_steps = 500
  return c
