r"""Transfer learning on the digits: pretrain the CNN on digits 0-5, then fine-tune on 6-9 (a new 4-class head).

  maasjax train --config experiments/digits_cnn_transfer.py --workdir runs/digits_0to5
  maasjax train --config experiments/digits_cnn_transfer.py:6to9 --workdir runs/digits_6to9_finetuned \
      --config.init_from.workdir=runs/digits_0to5
  maasjax train --config experiments/digits_cnn_transfer.py:6to9 --workdir runs/digits_6to9_scratch

The fine-tune loads every array whose path and shape match (the convolutions and the hidden dense layer)
and initialises the head afresh (10 -> 4 classes: its shape differs). Add
--config.init_from.freeze="('Conv_',)" to keep the convolutions fixed. benchmarks/transfer.py compares
the two at the same small step budget.
"""
import os

from maasjax.config import ConfigError, load_config_file

SPLITS = {'0to5': (0, 1, 2, 3, 4, 5), '6to9': (6, 7, 8, 9)}


def get_config(arg: str = '0to5'):
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'digits_cnn.py'))
  if arg not in SPLITS:
    raise ConfigError(f'experiments/digits_cnn_transfer.py:{arg}: expected one of {", ".join(SPLITS)}')
  with c.dataset.unlocked():
    c.dataset.classes = SPLITS[arg]
  if arg == '6to9':  # the fine-tune: a small budget, a lower peak learning rate
    c.num_train_steps = 150
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 10
    c.eval_every_steps = 50
    c.log_every_steps = 25
    c.checkpoint.every_steps = 150
  return c
