r"""Float against int8 ONNX (maasjax export --format onnx [--int8]) in onnxruntime, per family: file size, class
agreement with JAX, test accuracy, and latency at batch 1 and 64 in interleaved rounds (medians).

  .venv/bin/python benchmarks/onnx_int8.py runs/digits_cnn runs/digits_mlp runs/digits_resnet --out runs/onnx_bench

Each workdir is exported twice into OUT (float, then int8) through the CLI, so the figures are what a user gets.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(workdir: str, name: str, out: str, int8: bool) -> str:
  cmd = [sys.executable, '-m', 'maasjax.cli', 'export', '--format', 'onnx', '--workdir', workdir, '--model-name',
         name, '--out', out] + (['--int8'] if int8 else [])
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
  print(proc.stdout.strip().splitlines()[-1], flush=True)
  return os.path.join(out, name, '1', 'model.onnx')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'onnx_bench'))
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  import onnxruntime as ort
  from sklearn.datasets import load_digits
  ort.set_default_logger_severity(3)
  sys.path.insert(0, ROOT)
  models = {}
  for workdir in args.workdirs:
    name = os.path.basename(os.path.normpath(workdir))
    models[name] = export(workdir, name, args.out, False)
    models[name + ' int8'] = export(workdir, name + '_int8', args.out, True)
  digits = load_digits()
  x = digits.images.astype(np.float32)[..., None]
  sessions = {k: ort.InferenceSession(p, providers=['CPUExecutionProvider']) for k, p in models.items()}
  classes = {k: s.run(['classes'], {'inputs': x})[0] for k, s in sessions.items()}
  times: dict = {(k, b): [] for k in sessions for b in (1, 64)}
  for _ in range(args.rounds):
    for (k, b), ts in times.items():
      feed = {'inputs': x[:b]}
      for _ in range(20):
        sessions[k].run(None, feed)
      t = time.perf_counter()
      n = 300 if b == 1 else 60
      for _ in range(n):
        sessions[k].run(None, feed)
      ts.append((time.perf_counter() - t) / n * 1e3)
  rows = []
  for k in sessions:
    base = k.replace(' int8', '')
    rows.append({'model': k, 'bytes': os.path.getsize(models[k]),
                 'agreement_with_float': float(np.mean(classes[k] == classes[base])),
                 'accuracy_all_1797': float(np.mean(classes[k] == digits.target)),
                 'ms_1': statistics.median(times[(k, 1)]), 'ms_64': statistics.median(times[(k, 64)])})
  with open(os.path.join(args.out, 'onnx_int8.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print('\n| model | bytes | vs float | classes = float ONNX (1,797 digits) | ms @1 | ms @64 |\n|---|---|---|---|---|---|')
  for r in rows:
    base = next(x for x in rows if x['model'] == r['model'].replace(' int8', ''))
    print(f'| {r["model"]} | {r["bytes"]:,} | {base["bytes"] / r["bytes"]:.2f}x | {r["agreement_with_float"]:.2%} | '
          f'{r["ms_1"]:.3f} | {r["ms_64"]:.3f} |')


if __name__ == '__main__':
  main()
