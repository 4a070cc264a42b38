r"""Compression figures on the digits CNN and ResNet (issue 10's Must-show), re-runnable by one command:

  .venv/bin/python benchmarks/compression.py --out runs/compression_bench

Trains runs/digits_cnn and runs/digits_resnet first if they are missing (the README's commands), then:
the standard report (prune 50/80/90 %, 2:4, channels, int8 PTQ and QAT, prune 80 % + int8) plus channels with
the first conv kept; float, int8 and prune+int8 exports (SavedModel variables' bytes, parity); a student with
1/6.4 of the teacher's parameters distilled by benchmarks/distillation.py's recipe (that script compares it with
the same student trained without the teacher, over seeds); BatchNorm folding of the ResNet; and every model's serving latency timed side by side in one process
(the dense baseline twice, as a control for the machine's noise). Writes OUT/compression_bench.json and prints
the markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

def variables_bytes(version_dir: str) -> int:
  folder = os.path.join(version_dir, 'variables')
  return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'compression_bench'))
  parser.add_argument('--distill-steps', type=int, default=3000, help="the distilled student's training steps")
  args = parser.parse_args()
  from maasjax.compress.report import VARIANTS, markdown, measure_side_by_side, plot, run_variants, summary_row
  from maasjax.compress.workdir import compress_workdir
  from maasjax.config import load_workdir_config
  from maasjax.export.exporter import export_workdir
  from maasjax.export.layout import read_metadata
  if os.path.exists(args.out):
    raise SystemExit(f'{args.out} exists; pass a new --out')
  os.makedirs(args.out)
  t0 = time.time()
  load = os.getloadavg()
  from benchmarks.distillation import ensure_trained
  cnn, resnet = ensure_trained('digits_cnn'), ensure_trained('digits_resnet')
  results: dict = {'machine_load_at_start': load}

  # 1. The report's variants, plus channels with the first conv kept whole.
  report_dir = os.path.join(args.out, 'cnn_report')
  variants = tuple(v for v in VARIANTS if v[0] != 'fold') + (
      ('channels50_keep_conv0', 'channels', {'fraction': 0.5, 'overrides': "(('Conv_0', 0.0),)"}, None),)
  rows, skipped = run_variants(cnn, report_dir, measure_latency=False, variants=variants)
  workdirs = {r['variant']: os.path.join(report_dir, r['variant']) for r in rows[1:]}
  workdirs['dense baseline'] = cnn

  # 2. Distillation: one student by the measured recipe, for the size and latency rows (the with/without-teacher
  # comparison over seeds is benchmarks/distillation.py's).
  from benchmarks.distillation import ARMS, distill
  recipe = next(iter(ARMS))
  student = distill(cnn, os.path.join(args.out, 'student_distilled_seed0'), ARMS[recipe], args.distill_steps, 0)
  results['distill'] = {'recipe': recipe, 'steps': args.distill_steps, **student}
  with open(os.path.join(student['workdir'], 'summary.json')) as f:
    rows.append(summary_row('student (distilled, seed 0)', 'distill', json.load(f)))
  workdirs['student (distilled, seed 0)'] = student['workdir']

  # 3. Folding the ResNet.
  fold_dir = os.path.join(args.out, 'resnet_fold')
  fold = compress_workdir(resnet, fold_dir, 'fold', measure_latency=True, verbose=False)
  from maasjax.compress.pruning import named_leaves
  from maasjax.train.loop import restore_latest
  _, folded_state, _ = restore_latest(load_workdir_config(fold_dir), fold_dir)
  results['fold'] = {'max_abs_diff_logits': fold['compression']['max_abs_diff_logits'],
                     'batchnorm_leaves_left': [k for k in named_leaves({'params': folded_state.params,
                                                                        **folded_state.model_state})
                                               if 'norm' in k.lower() or 'batch_stats' in k],
                     'test/accuracy': fold['test/accuracy'],
                     'baseline_test/accuracy': fold['compression']['baseline']['test/accuracy'],
                     'latency_ms': fold['compression']['latency_ms'],
                     'baseline_latency_ms': fold['compression']['baseline']['latency_ms']}

  # 4. Exports: SavedModel variables' bytes and parity.
  export_base = os.path.join(args.out, 'exports')
  exports = {}
  for name, workdir in (('digits_float', cnn), ('digits_int8', workdirs['int8_ptq']),
                        ('digits_prune80_int8', workdirs['prune80_int8']),
                        ('digits_channels50', workdirs['channels50'])):
    result = export_workdir(load_workdir_config(workdir), workdir, name, export_base)
    meta = read_metadata(result.path)
    exports[name] = {'variables_bytes': variables_bytes(result.path),
                     'parity_max_abs_diff_logits': meta['parity']['max_abs_diff']['serving_default/logits'],
                     'parity_examples': meta['parity']['num_examples']}
  results['exports'] = exports

  # 5. Latency, every model side by side (the dense baseline twice: the spread between the two is the noise).
  order = ['dense baseline'] + [r['variant'] for r in rows[1:]]
  timed = [{'variant': v} for v in order] + [{'variant': 'dense baseline (again)'}]
  measure_side_by_side(timed, [workdirs[v] for v in order] + [cnn])
  latency = {t['variant']: t['latency_ms'] for t in timed}
  for r in rows:
    r['latency_ms'] = latency[r['variant']]
  results['latency_control'] = latency['dense baseline (again)']
  results['rows'], results['skipped'] = rows, skipped
  results['machine_load_at_end'] = os.getloadavg()
  results['wall_time_s'] = time.time() - t0
  with open(os.path.join(args.out, 'compression_bench.json'), 'w') as f:
    json.dump(results, f, indent=2)
  plot(rows, os.path.join(args.out, 'compression_report.png'))

  print(markdown(cnn, rows, skipped))
  ctl = results['latency_control']
  print(f'latency control (dense baseline timed twice): {rows[0]["latency_ms"]} and {ctl}')
  print('\n| export | SavedModel variables bytes | vs float | parity max abs diff (logits) |\n|---|---|---|---|')
  for name, e in exports.items():
    ratio = exports['digits_float']['variables_bytes'] / e['variables_bytes']
    print(f'| {name} | {e["variables_bytes"]:,} | {ratio:.2f}x | {e["parity_max_abs_diff_logits"]:.2g} |')
  d = results['distill']
  print(f'\ndistilled student ({d["recipe"]}, {d["steps"]} steps, seed 0): test accuracy {d["test/accuracy"]:.4f}; '
        'with and without the teacher over seeds: benchmarks/distillation.py')
  print(f'\nfold: {results["fold"]}')
  print(f'\nload {load} -> {results["machine_load_at_end"]}, {results["wall_time_s"]:.0f} s')


if __name__ == '__main__':
  main()
