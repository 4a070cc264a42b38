"""`maasjax compress`: a trained workdir -> a compressed workdir, or (`--report`) a standard set of variants
measured side by side."""
from __future__ import annotations

import json

from maasjax.config import ConfigError

METHOD_NAMES = ('prune', 'channels', 'quantize', 'distill', 'cut', 'fold')


def add_args(p) -> None:
  p.add_argument('--workdir', required=True, help='the trained workdir to compress (its config.json, checkpoints/)')
  p.add_argument('--method', choices=METHOD_NAMES,
                 help='prune (magnitude, unstructured or N:M), channels (remove conv channels / dense units), '
                      'quantize (int8 w8a8: ptq or qat), distill (train a smaller student on this teacher), cut '
                      '(remove layers by index), fold (BatchNorm into the convolutions)')
  p.add_argument('--out', required=True, help='the new workdir (with --report: the report folder)')
  p.add_argument('--report', action='store_true',
                 help='run a standard set of variants into OUT/<variant> and write OUT/compression_report.md, '
                      '.json and .png (accuracy against size and latency, the dense baseline marked)')
  p.add_argument('--no-latency', action='store_true', help='skip the latency measurement (batch 1 and 64)')


def run(args, overrides) -> None:
  if args.report:
    if args.method:
      raise ConfigError('--report runs its own set of methods; leave out --method')
    from maasjax.compress.report import write_report
    paths = write_report(args.workdir, args.out, overrides, measure_latency=not args.no_latency)
    print('report: ' + ', '.join(paths))
    return
  if not args.method:
    raise ConfigError('--method is required (prune, channels, quantize, distill, cut, fold), or --report')
  from maasjax.compress.workdir import compress_workdir
  summary = compress_workdir(args.workdir, args.out, args.method, overrides, measure_latency=not args.no_latency)
  block = summary['compression']
  base = block['baseline']
  shown = {k: summary[k] for k in summary if k.startswith('test/')}
  shown.update({f'baseline {k}': base[k] for k in base if k.startswith('test/')})
  for key in ('params', 'nonzero_params', 'bytes', 'gzip_bytes'):
    shown[key] = f'{block[key]} (baseline {base[key]})'
  if 'latency_ms' in block:
    shown['latency_ms'] = f'{json.dumps(block["latency_ms"])} (baseline {json.dumps(base["latency_ms"])})'
  print(f'compressed workdir {args.out}:\n' + '\n'.join(f'  {k}: {v}' for k, v in shown.items()))
