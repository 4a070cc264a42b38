r"""Distillation on the digits CNN (issue 10): the same student with and without its teacher, over seeds and splits.

  .venv/bin/python benchmarks/distillation.py --out runs/distill_bench --splits 3 --seeds 3

Trains the teachers first if missing (runs/digits_cnn, and runs/digits_cnn_splitS for dataset.split_seed=S). Each
arm is one `maasjax compress --method distill` per split and seed, the student `features=(16, 32), dense=64`
(13,706 parameters, 1/6.4 of the teacher's 87,178), every arm for the same steps on the same training digits.
The default arms are Hinton et al.'s comparison (their MNIST student was unregularised with and without the
teacher): classic KD (T 4, alpha 0.9) against the same student without the teacher, both without dropout or
shift augmentation; and, for reference, the student's usual recipe (dropout 0.1, 1-pixel shifts) without a
teacher. `--arms` adds KD with that recipe, function matching (mixup seen by teacher and student; Beyer et al.
2022) and mixup without the teacher. Prints one markdown table and writes OUT/distillation.json. Test accuracy
decides; the validation split (180 digits) is printed beside it, since one digit there is 0.56 points.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

STUDENT = 'features=(16, 32), dense=64'
UNREGULARISED = {'student': STUDENT + ', dropout=0.0', 'dataset.augment.random_shift': '0'}
# name -> overrides of the student's config (compress.* unless the key has a dot)
ARMS = {
    'classic KD (T 4, alpha 0.9), student unregularised': {**UNREGULARISED, 'alpha': '0.9', 'temperature': '4.0'},
    'without teacher, unregularised': {**UNREGULARISED, 'alpha': '0.0'},
    'without teacher, dropout 0.1 + 1-pixel shifts': {'student': STUDENT, 'alpha': '0.0'},
    'classic KD (T 4, alpha 0.9), dropout 0.1 + shifts': {'student': STUDENT, 'alpha': '0.9', 'temperature': '4.0'},
    'function matching (mixup 1, T 1, alpha 1), dropout 0.1 + shifts': {'student': STUDENT, 'alpha': '1.0',
                                                                       'temperature': '1.0', 'mixup': '1.0'},
    'without teacher, mixup 1, dropout 0.1 + shifts': {'student': STUDENT, 'alpha': '0.0', 'mixup': '1.0'},
}
BASELINE = 'without teacher, unregularised'  # the gap is measured against the same student without its teacher


def ensure_trained(name: str, split: int = 0) -> str:
  """runs/NAME trained with experiments/NAME.py (the README's command) if missing; for split S > 0,
  runs/NAME_splitS with dataset.split_seed=S."""
  workdir = os.path.join(ROOT, 'runs', name + (f'_split{split}' if split else ''))
  if not os.path.exists(os.path.join(workdir, 'summary.json')):
    subprocess.run([sys.executable, '-m', 'maasjax.cli', 'train', '--config', f'experiments/{name}.py',
                    '--workdir', workdir, '--config.progress_bar=false']
                   + ([f'--config.dataset.split_seed={split}'] if split else []), cwd=ROOT, check=True)
  return workdir


def distill(teacher: str, out: str, arm: dict, steps: int, seed: int) -> dict:
  from maasjax.compress.workdir import compress_workdir
  overrides = [('compress.fine_tune_steps', str(steps)), ('seed', str(seed))]
  overrides += [(k if '.' in k else f'compress.{k}', v) for k, v in arm.items()]
  with open(os.devnull, 'w') as quiet, contextlib.redirect_stdout(quiet):  # one line per run, below, not 60
    summary = compress_workdir(teacher, out, 'distill', overrides, measure_latency=False, verbose=False)
  return {'seed': seed, 'test/accuracy': summary['test/accuracy'], 'eval/accuracy': summary['eval/accuracy'],
          'params': summary['compression']['params'], 'workdir': out}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'distill_bench'))
  parser.add_argument('--seeds', type=int, default=5)
  parser.add_argument('--splits', type=int, default=1,
                      help='data splits (dataset.split_seed 0..N-1), each with its own teacher: more test digits')
  parser.add_argument('--steps', type=int, default=3000, help="every arm's training steps (the teacher's: 1,500)")
  parser.add_argument('--arms', default='0,1,2',
                      help='which arms, by index: ' + '; '.join(f'{i} {k}' for i, k in enumerate(ARMS)))
  args = parser.parse_args()
  if os.path.exists(args.out):
    raise SystemExit(f'{args.out} exists; pass a new --out')
  names = list(ARMS)
  try:
    chosen = [names[int(i)] for i in args.arms.split(',')]
  except (ValueError, IndexError):
    raise SystemExit(f'--arms {args.arms!r}: expected indices 0..{len(names) - 1}, comma-separated') from None
  os.makedirs(args.out)
  t0, load = time.time(), os.getloadavg()
  results = {'student': STUDENT, 'steps': args.steps, 'teachers': [], 'arms': {}}
  for split in range(args.splits):
    teacher = ensure_trained('digits_cnn', split)
    with open(os.path.join(teacher, 'summary.json')) as f:
      t = json.load(f)
    results['teachers'].append({'split': split, 'test/accuracy': t['test/accuracy'],
                                'eval/accuracy': t['eval/accuracy'], 'params': t['num_params']})
    for seed in range(args.seeds):  # seeds outside arms: a run cut short has every arm for the seeds done
      for name in chosen:
        out = os.path.join(args.out, f'split{split}_arm{names.index(name)}_seed{seed}')
        r = dict(distill(teacher, out, ARMS[name], args.steps, seed), split=split)
        results['arms'].setdefault(name, []).append(r)
        print(f'split {split}, {name}, seed {seed}: test {r["test/accuracy"]:.4f}, '
              f'validation {r["eval/accuracy"]:.4f}', flush=True)
  results.update(load_at_start=load, wall_time_s=time.time() - t0)
  with open(os.path.join(args.out, 'distillation.json'), 'w') as f:
    json.dump(results, f, indent=2)
  print_table(results)
  print(f'\nload {load} at the start, {results["wall_time_s"]:.0f} s')


def print_table(results: dict) -> None:
  """Per arm: test accuracy per (split, seed), the mean, test errors per split, and the share of the
  teacher-to-student gap recovered against the hard-label student (pooled over splits)."""
  mean = lambda xs: sum(xs) / len(xs)
  teachers = results['teachers']
  teacher_acc = mean([t['test/accuracy'] for t in teachers])
  hard = results['arms'].get(BASELINE)
  base = mean([r['test/accuracy'] for r in hard]) if hard else None
  params = next(iter(results['arms'].values()))[0]['params']
  test_size = 359
  per_teacher = ', '.join(f'{t["test/accuracy"]:.4f}' for t in teachers)
  print(f'\nteacher ({teachers[0]["params"]:,} params), test accuracy per split: {per_teacher} (mean {teacher_acc:.4f}, '
        f'{(1 - teacher_acc) * test_size:.1f} errors of {test_size}); student {results["student"]}: {params:,} '
        f'params (1/{teachers[0]["params"] / params:.1f}); {results["steps"]} steps each\n')
  print(f'| arm | test accuracy per split and seed | mean | errors (of 359) | share of the gap recovered (vs {BASELINE}) '
        '| validation mean |')
  print('|---|---|---|---|---|---|')
  for name, rs in results['arms'].items():
    per_split = ['/'.join(f'{r["test/accuracy"]:.4f}' for r in rs if r['split'] == t['split']) for t in teachers]
    m = mean([r['test/accuracy'] for r in rs])
    share = f'{(m - base) / (teacher_acc - base):.2f}' if base is not None and teacher_acc > base else '-'
    print(f'| {name} | {"; ".join(per_split)} | {m:.4f} | {(1 - m) * test_size:.1f} | {share} | '
          f'{mean([r["eval/accuracy"] for r in rs]):.4f} |')


if __name__ == '__main__':
  main()
