"""Private training on the embedded digits: test accuracy and epsilon (delta 1e-5) for the non-private
baseline and several target epsilons (mean +- std over seeds), the loss-threshold membership-inference AUC
of each, and the DP-SGD step's cost against the ordinary step (same model, same expected batch).

  .venv/bin/python benchmarks/privacy.py --seeds 0,1,2 --targets 8,3,1
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


def run(target: float | None, seed: int, workdir: str) -> dict:
  from maasjax.config import load_config
  from maasjax.privacy.membership import write_report
  from maasjax.train.loop import restore_latest, train_and_evaluate
  config = load_config(os.path.join(ROOT, 'experiments', 'digits_mlp_dp.py'))
  config.seed, config.progress_bar = seed, False
  if target is None:
    config.privacy.enabled = False
  else:
    config.privacy.target_epsilon = float(target)
  summary = train_and_evaluate(config, workdir)
  if target is None:  # a private run writes its report itself
    exp, state, _ = restore_latest(config, workdir)
    write_report(exp, state, workdir, summary)
  with open(os.path.join(workdir, 'privacy_report.json')) as f:
    report = json.load(f)
  return {'target': target, 'seed': seed, 'test_accuracy': summary['test/accuracy'],
          'epsilon': summary.get('privacy/epsilon'), 'noise_multiplier': summary.get('privacy/noise_multiplier'),
          'auc': report['auc'], 'advantage': report['advantage']}


def step_cost(steps: int = 100) -> dict:
  """Examples/s of the jitted DP-SGD step (Poisson batch padded to its maximum) and of the ordinary step."""
  import jax
  from maasjax.config import load_config
  from maasjax.train.loop import private_batch, setup
  out = {}
  for name, enabled in (('ordinary', False), ('dp_sgd', True)):
    config = load_config(os.path.join(ROOT, 'experiments', 'digits_mlp_dp.py'))
    config.privacy.enabled = enabled
    exp = setup(config)
    state = exp.steps.init()
    batches = [private_batch(exp, s) if enabled else exp.dataset.train_batch(s, config.batch_size)
               for s in range(steps)]
    state, sums = exp.steps.train_step(state, batches[0])  # compile
    jax.block_until_ready(sums)
    t0 = time.perf_counter()
    for b in batches:
      state, sums = exp.steps.train_step(state, b)
    jax.block_until_ready(sums)
    out[name] = steps * config.batch_size / (time.perf_counter() - t0)  # expected examples per step
  out['ratio'] = out['dp_sgd'] / out['ordinary']
  return out


def main() -> None:
  import numpy as np
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--targets', default='8,3,1')
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'privacy.json'))
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for target in [None] + [float(t) for t in args.targets.split(',')]:
      for seed in seeds:
        rows.append(run(target, seed, os.path.join(tmp, f'{target}_{seed}')))
        print(json.dumps(rows[-1]), flush=True)
  cost = step_cost()
  print('| setting | noise multiplier | epsilon (delta 1e-5) | test accuracy (mean +- std) | MIA AUC | MIA advantage |')
  print('|---|---|---|---|---|---|')
  for target in [None] + [float(t) for t in args.targets.split(',')]:
    group = [r for r in rows if r['target'] == target]
    acc = np.array([r['test_accuracy'] for r in group])
    eps = '-' if target is None else f'{np.mean([r["epsilon"] for r in group]):.3g}'
    sigma = '-' if target is None else f'{group[0]["noise_multiplier"]:.3g}'
    print(f'| {"non-private" if target is None else f"target epsilon {target:g}"} | {sigma} | {eps} | '
          f'{acc.mean():.4f} +- {acc.std():.4f} | {np.mean([r["auc"] for r in group]):.3f} | '
          f'{np.mean([r["advantage"] for r in group]):.3f} |')
  print(f'step cost: ordinary {cost["ordinary"]:,.0f} examples/s, DP-SGD {cost["dp_sgd"]:,.0f} examples/s '
        f'({cost["ratio"]:.2f}x)')
  with open(args.out, 'w') as f:
    json.dump({'runs': rows, 'step_cost': cost}, f, indent=2)


if __name__ == '__main__':
  main()
