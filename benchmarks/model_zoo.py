"""Trains every offline model-zoo config from scratch with `maasjax train` (wall time includes start-up and
compilation) and prints the results table for BENCHMARKS.md:
  .venv/bin/python benchmarks/model_zoo.py [--only karate_gcn,char_lm] [--root runs/zoo]"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config -> the summary metric it is judged by
CONFIGS = {
    'karate_gcn': 'test/accuracy',
    'digits_knn_gcn': 'test/accuracy',
    'digits_knn_gat': 'test/accuracy',
    'graph_families_gcn': 'test/accuracy',
    'seq2seq_transformer': 'test/exact_match',
    'char_lm': 'eval/loss',
    'digits_lstm': 'test/accuracy',
    'digits_transformer': 'test/accuracy',
    'majority_transformer': 'test/accuracy',
}


def run(cmd: list[str]) -> tuple[float, str]:
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
  return time.time() - t0, proc.stdout


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--only', default='', help='comma list of configs (default: all)')
  p.add_argument('--root', default='runs/zoo')
  args = p.parse_args(argv)
  names = [n for n in (args.only.split(',') if args.only else CONFIGS) if n]
  maasjax = [sys.executable, '-m', 'maasjax.cli']
  print('| config | model | dataset | result | wall time (s) |')
  print('|---|---|---|---|---|')
  for name in names:
    workdir = os.path.join(args.root, name)
    shutil.rmtree(os.path.join(ROOT, workdir), ignore_errors=True)
    seconds, _ = run(maasjax + ['train', '--config', f'experiments/{name}.py', '--workdir', workdir,
                                '--config.progress_bar=false'])
    with open(os.path.join(ROOT, workdir, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(ROOT, workdir, 'config.json')) as f:
      config = json.load(f)
    metric = CONFIGS[name]
    result = f'{metric} {summary[metric]:.4f}'
    if name == 'char_lm':
      with open(os.path.join(ROOT, workdir, 'dataset_info.json')) as f:
        entropy = json.load(f)['extra']['unigram_entropy']
      result += f' nats/char (unigram entropy {entropy:.3f}); test/loss {summary["test/loss"]:.4f}'
      _, text = run(maasjax + ['generate', '--workdir', workdir, '--prompt', 'The light ', '--max_new_tokens', '200',
                               '--temperature', '0.7'])
      print(f'<!-- char_lm sample: {text.strip()!r} -->', file=sys.stderr)
    print(f'| `{name}` | {config["model"]["name"]} | {config["dataset"]["name"]} | {result} | {seconds:.0f} |',
          flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
