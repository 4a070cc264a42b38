r"""Token sequence classification: a Transformer encoder names the most frequent digit in a digit string.

  maasjax train --config experiments/majority_transformer.py --workdir runs/majority_transformer

Strings of 8-24 digits, padded with 0 (masked out of attention and pooling); 20,000 training strings,
1,000 validation and 1,000 held-out test strings. Expected (2-core CPU): test accuracy ~1.0 in under a
minute (mean pooling over the embedded digits makes counting easy: a pipeline check more than a challenge).
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_classifier', 'num_layers': 2, 'num_heads': 4, 'emb_dim': 64, 'mlp_dim': 128,
      'dropout': 0.0, 'attention_dropout': 0.0, 'positions': 'rotary', 'max_len': 24, 'remat': False})
  c.dataset = ml_collections.ConfigDict({
      'name': 'majority_digit', 'min_len': 8, 'max_len': 24, 'num_train': 20000, 'num_validation': 1000,
      'num_test': 1000, 'generator_seed': 0})
  c.batch_size = 64
  c.eval_batch_size = 500
  c.num_train_steps = 500
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.01
  c.log_every_steps = 100
  c.eval_every_steps = 250
  c.checkpoint.every_steps = 500
  return c
