"""Defaults shared by every experiment config (`from maasjax.defaults import base_config`)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dtype = 'float32'  # compute dtype; params and optimizer state stay float32
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.progress_bar = True
  c.mesh = ml_collections.ConfigDict({'data': -1})
  c.sharding = ml_collections.ConfigDict({'rules': ()})
  c.checkpoint = ml_collections.ConfigDict({'every_steps': 250, 'keep': 3, 'async_save': True})
  c.optimizer = ml_collections.ConfigDict({
      'name': 'adamw', 'learning_rate': 1e-3, 'schedule': 'cosine', 'warmup_steps': 50,
      'end_learning_rate_factor': 0.0, 'momentum': 0.9, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
      'weight_decay': 1e-4, 'grad_clip_norm': 0.0, 'grad_accum_steps': 1})
  return c
