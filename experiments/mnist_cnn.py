r"""The classic MNIST CNN on tfds MNIST (needs the dataset prepared in config.dataset.data_dir).

  maasjax train --config experiments/mnist_cnn.py --workdir runs/mnist_cnn \
      --config.dataset.data_dir=~/tensorflow_datasets

Expected: test accuracy ~0.99 after 2 epochs (the data is not on this machine; the pipeline is
tested under tfds.testing.mock_data).
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({'name': 'cnn', 'features': (32, 64), 'dense': 256, 'dropout': 0.0})
  c.dataset = ml_collections.ConfigDict({
      'name': 'mnist', 'data_dir': '', 'download': False, 'normalize': 'scale', 'validation_fraction': 0.1,
      'split_seed': 0, 'augment': {'random_shift': 0, 'horizontal_flip': False}})
  c.batch_size = 128
  c.cpu_async_dispatch = False  # steps of 10+ ms on CPU run faster inline (+5-18% per step; maasjax/defaults.py)
  c.num_train_steps = 1000  # ~2.4 epochs of the 54k training images
  c.optimizer.name = 'momentum'
  c.optimizer.learning_rate = 0.1
  c.optimizer.weight_decay = 0.0
  c.eval_every_steps = 500
  c.checkpoint.every_steps = 500
  return c
