"""`maasjax train` and `maasjax eval`: flags, then the loop (imported only when the command runs)."""
from __future__ import annotations

import json

from maasjax.config import load_config, load_workdir_config


def train_args(p) -> None:
  p.add_argument('--config', required=True,
                 help='experiment config file, e.g. experiments/digits_cnn.py; override keys with --config.a.b=value')
  p.add_argument('--workdir', required=True, help='directory for checkpoints, metrics, summaries')


def train(args, overrides) -> None:
  from maasjax import parallel
  from maasjax.train.loop import train_and_evaluate
  config = load_config(args.config, overrides)
  parallel.apply_cpu_dispatch(config)
  summary = train_and_evaluate(config, args.workdir)
  keys = [k for k in summary if k.startswith(('test/', 'eval/'))]
  print('summary: ' + ', '.join(f'{k}={summary[k]:.4f}' for k in keys) +
        f', wall_time_s={summary["wall_time_s"]:.1f}, params={summary["num_params"]}')
  print(f'outputs in {args.workdir}: summary.json, metrics.jsonl, learning_curves.png, checkpoints/')


def eval_args(p) -> None:
  p.add_argument('--workdir', required=True, help='a trained workdir (its config.json and checkpoints/)')
  p.add_argument('--config', help='experiment config file (default: the workdir\'s config.json); '
                                  'with --config.a.b=value overrides')
  p.add_argument('--split', default='all',
                 help='split to evaluate: all (validation and test, as summary.json), validation, test, ...')


def evaluate(args, overrides) -> None:
  from maasjax import parallel
  from maasjax.train.loop import evaluate as evaluate_workdir
  config = load_workdir_config(args.workdir, args.config, overrides)
  parallel.apply_cpu_dispatch(config)
  metrics = evaluate_workdir(config, args.workdir, args.split)
  print(json.dumps(metrics, indent=2))
