r"""A small ResNet (3 stages x 2 blocks, BatchNorm) on tfds CIFAR-10.

  maasjax train --config experiments/cifar10_resnet.py --workdir runs/cifar10_resnet \
      --config.dataset.data_dir=~/tensorflow_datasets

Expected: test accuracy ~0.90 after 30 epochs on one GPU (not run on the 2-core CPU machine).
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'resnet', 'stage_sizes': (2, 2, 2), 'width': 16})
  c.dataset = ml_collections.ConfigDict({
      'name': 'cifar10', 'data_dir': '', 'download': False, 'normalize': 'standard', 'validation_fraction': 0.1,
      'split_seed': 0, 'augment': {'random_shift': 4, 'horizontal_flip': True}})
  c.batch_size = 128
  c.cpu_async_dispatch = False  # steps of 10+ ms on CPU run faster inline (+9% per step; maasjax/defaults.py)
  c.num_train_steps = 10_500  # 30 epochs of 45k images
  c.optimizer.name = 'nesterov'
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 5e-4
  c.optimizer.warmup_steps = 500
  c.eval_every_steps = 1000
  c.checkpoint.every_steps = 1000
  return c
