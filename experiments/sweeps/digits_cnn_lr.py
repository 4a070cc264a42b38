"""Learning rate x seed ablation of the default digits CNN: 3 x 3 trials, each its own `maasjax train`.

  maasjax sweep experiments/sweeps/digits_cnn_lr.py --workdir runs/lr --parallel 2
"""
CONFIG = 'experiments/digits_cnn.py'  # relative to the repository root or to this file


def get_sweep(h):
  return h.product([h.sweep('config.optimizer.learning_rate', [1e-3, 3e-3, 1e-2]),
                    h.sweep('config.seed', [0, 1, 2])])
