r"""The digits MLP trained with DP-SGD: Poisson-sampled batches, per-example clipping, Gaussian noise.

  maasjax train --config experiments/digits_mlp_dp.py --workdir runs/digits_mlp_dp
  maasjax train --config experiments/digits_mlp_dp.py --workdir runs/dp_eps1 --config.privacy.target_epsilon=1

The epsilon it reaches (at delta 1e-5, RDP accountant) is printed at the start, logged with every
evaluation and written to summary.json; privacy_report.json holds the membership-inference check.
Measured (2-core CPU, mean of 3 seeds): see BENCHMARKS.md "Private training".
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  # No dropout (per-example dropout is allowed, but the noise already regularises) and no BatchNorm
  # (batch statistics would mix examples: refused with privacy).
  # A small MLP: the noise is added to every parameter, so fewer parameters keep more signal.
  c.model = ml_collections.ConfigDict({'name': 'mlp', 'hidden': (64,), 'dropout': 0.0})
  c.dataset = ml_collections.ConfigDict({
      'name': 'digits', 'normalize': 'standard', 'validation_fraction': 0.1, 'test_fraction': 0.2,
      'split_seed': 0, 'augment': {'random_shift': 0, 'horizontal_flip': False}})
  c.batch_size = 64  # expected examples per step: q = 64 / 1,258
  c.num_train_steps = 800  # ~40 epochs
  c.optimizer.name = 'adam'
  c.optimizer.learning_rate = 5e-3
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.log_every_steps = 100
  c.eval_every_steps = 200
  c.checkpoint.every_steps = 200
  c.privacy.enabled = True
  c.privacy.l2_norm_clip = 1.0
  c.privacy.noise_multiplier = 2.0
  c.privacy.delta = 1e-5
  return c
