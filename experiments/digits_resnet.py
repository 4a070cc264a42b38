r"""The default digits experiment with a small ResNet (BatchNorm) instead of the CNN.

  maasjax train --config experiments/digits_resnet.py --workdir runs/digits_resnet

Expected (2-core CPU): test accuracy >= 0.95 in about a minute.
"""
import os

import ml_collections

from maasjax.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits_cnn.py'))
  c.model = ml_collections.ConfigDict({'name': 'resnet', 'stage_sizes': (1, 1), 'width': 16})
  c.num_train_steps = 600
  c.checkpoint.every_steps = 300
  return c
