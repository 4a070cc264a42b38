r"""Transfer learning on the digits (issue 11's Must-show): pretrain the CNN on digits 0-5, then train on 6-9
(a new 4-class head) from that checkpoint or from scratch, at the same small step budgets, over seeds.

  .venv/bin/python benchmarks/transfer.py --out runs/transfer_bench

Variants: scratch; init_from (every matching array loaded, the head new); init_from with the convolutions
frozen (config.init_from.freeze). Prints a markdown table of test accuracy (mean ± std over seeds) and writes
OUT/transfer_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
CONFIG = os.path.join(ROOT, 'experiments', 'digits_cnn_transfer.py')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'transfer_bench'))
  parser.add_argument('--budgets', default='20,50,150', help='fine-tune step budgets')
  parser.add_argument('--seeds', type=int, default=3)
  args = parser.parse_args()
  from maasjax.config import apply_override, load_config_file
  from maasjax.train.loop import train_and_evaluate
  t0 = time.time()
  pre = os.path.join(args.out, 'pretrained_0to5')
  config = load_config_file(f'{CONFIG}:0to5')
  config.progress_bar = False
  pretrained = train_and_evaluate(config, pre)
  variants = {'scratch': [], 'init_from': [('init_from.workdir', pre)],
              'init_from, convs frozen': [('init_from.workdir', pre), ('init_from.freeze', "('Conv_',)")]}
  rows = []
  for budget in [int(b) for b in args.budgets.split(',')]:
    for name, overrides in variants.items():
      accuracies = []
      for seed in range(args.seeds):
        config = load_config_file(f'{CONFIG}:6to9')
        for key, value in overrides + [('num_train_steps', str(budget)), ('seed', str(seed)),
                                       ('checkpoint.every_steps', str(budget)), ('progress_bar', 'false'),
                                       ('eval_every_steps', str(budget)), ('optimizer.warmup_steps', str(budget // 10))]:
          apply_override(config, key, value)
        workdir = os.path.join(args.out, f'6to9_{budget}steps_{name.replace(", ", "_").replace(" ", "_")}_seed{seed}')
        accuracies.append(train_and_evaluate(config, workdir)['test/accuracy'])
      rows.append({'steps': budget, 'variant': name, 'test/accuracy': accuracies})
  result = {'pretrained_0to5_test/accuracy': pretrained['test/accuracy'], 'rows': rows,
            'wall_time_s': time.time() - t0}
  with open(os.path.join(args.out, 'transfer_bench.json'), 'w') as f:
    json.dump(result, f, indent=2)
  print(f'\npretrained on digits 0-5: test accuracy {pretrained["test/accuracy"]:.4f}\n')
  print('| fine-tune steps on 6-9 | variant | test accuracy (mean ± std) | per seed |\n|---|---|---|---|')
  for r in rows:
    a = r['test/accuracy']
    print(f'| {r["steps"]} | {r["variant"]} | {statistics.mean(a):.4f} ± {statistics.pstdev(a):.4f} | '
          f'{", ".join(f"{x:.4f}" for x in a)} |')
  print(f'\n{result["wall_time_s"]:.0f} s')


if __name__ == '__main__':
  main()
