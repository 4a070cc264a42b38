"""`maasjax export` and `maasjax models`: thin CLI over the exporter and the base-path catalog."""
from __future__ import annotations

import json

from maasjax.config import ConfigError, load_workdir_config


def export_args(p):
  p.add_argument('--config', help='experiment config file; default: the workdir\'s config.json')
  p.add_argument('--workdir', required=True, help='the trained workdir (checkpoints/, config.json)')
  p.add_argument('--model-name', required=True, help='name in URLs and in OUT/NAME/VERSION')
  p.add_argument('--version', type=int, help='version number (default: the next free one)')
  p.add_argument('--out', default='exports', help='model base path (default: exports)')
  p.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  p.add_argument('--platforms', default='cpu,cuda,tpu', help='platforms to lower for (default: cpu,cuda,tpu)')
  p.add_argument('--parity-examples', type=int, default=64, help='held-out inputs for the parity check')
  p.add_argument('--format', default='savedmodel', choices=('savedmodel', 'onnx'),
                 help='savedmodel (default: TF Serving layout, with the JAX artifact beside it) or onnx '
                      '(Triton model repository: OUT/NAME/VERSION/model.onnx + OUT/NAME/config.pbtxt)')
  p.add_argument('--max-batch-size', type=int, default=32, help='onnx: max_batch_size in config.pbtxt')
  p.add_argument('--int8', action='store_true',
                 help='onnx: quantize to int8 (onnxruntime static QDQ, calibrated on training batches); refused '
                      'unless its classes equal JAX\'s on 99%% of the held-out inputs')
  p.add_argument('--decode-slots', type=int, default=8,
                 help='decoder LMs: requests decoded at once by the streaming server (/v1/completions; default 8, '
                      '0: no completions serving)')
  p.add_argument('--max-length', type=int, default=None,
                 help='decoder LMs: prompt + generated tokens per request (default: the training context)')


def export(args, overrides):
  platforms = tuple(p.strip() for p in args.platforms.split(',') if p.strip())
  unknown = sorted(set(platforms) - {'cpu', 'cuda', 'rocm', 'tpu'})
  if unknown or not platforms:
    raise ConfigError(f'--platforms {args.platforms!r}: expected a comma list of cpu, cuda, rocm, tpu')
  if args.parity_examples < 1:
    raise ConfigError(f'--parity-examples {args.parity_examples}: expected a positive number of held-out inputs')
  config = load_workdir_config(args.workdir, args.config, overrides)
  if args.int8 and args.format != 'onnx':
    raise ConfigError('--int8 is for --format onnx; a SavedModel is int8 when its workdir is (maasjax compress '
                      '--method quantize)')
  if args.format == 'onnx':
    from maasjax.export.onnx import export_onnx
    if args.max_batch_size < 1:
      raise ConfigError(f'--max-batch-size {args.max_batch_size}: expected a positive integer')
    result = export_onnx(config, args.workdir, args.model_name, args.out, args.version, args.parity_examples,
                         args.step, args.max_batch_size, int8=args.int8)
    print(f'exported {result.path} in {result.seconds:.1f} s; onnxruntime parity on {result.num_examples} held-out '
          'inputs: ' + ', '.join(f'{k}={v:.2g}' for k, v in result.max_abs_diff.items()))
    if result.int8:
      i8 = result.int8
      print(f'int8: classes equal to JAX on {i8["class_agreement"]:.1%}; {i8["int8_bytes"]:,} bytes against '
            f'{i8["float_bytes"]:,} float ({i8["float_bytes"] / i8["int8_bytes"]:.2f}x smaller)')
    return
  from maasjax.export.exporter import export_workdir
  if args.decode_slots < 0:
    raise ConfigError(f'--decode-slots {args.decode_slots}: expected 0 (no completions serving) or more')
  result = export_workdir(config, args.workdir, args.model_name, args.out, args.version, platforms,
                          args.parity_examples, args.step, args.decode_slots, args.max_length)
  print(f'exported {result.path} in {result.seconds:.1f} s; parity on {result.num_examples} held-out inputs: '
        + ', '.join(f'{k}={v:.2g}' for k, v in result.max_abs_diff.items()))


def models_args(p):
  p.add_argument('--model-base-path', required=True, help='folder of NAME/VERSION/ SavedModels')
  p.add_argument('--json', action='store_true', help='print JSON instead of a table')


def models(args, overrides):
  from maasjax.export.layout import catalog
  entries = catalog(args.model_base_path)
  if args.json:
    print(json.dumps(entries, indent=2))
    return
  if not entries:
    print(f'no models under {args.model_base_path}')
    return
  rows = [('MODEL', 'VERSION', 'TASK', 'INPUTS', 'SIZE', 'PRIVACY', 'TEST METRICS')]
  for e in entries:
    inputs = ' '.join(f'{k}:{v["dtype"]}{v["shape"]}' for k, v in e['inputs'].items()) or '-'
    metrics = ' '.join(f'{k[5:]}={v:.4g}' for k, v in e['metrics'].items()) or '-'
    privacy = f'eps={e["epsilon"]:.3g}' if e.get('epsilon') is not None else '-'
    rows.append((e['name'], str(e['version']), e['task'], inputs, f'{e["size_bytes"] / 1e6:.2f} MB', privacy,
                 metrics if 'error' not in e else e['error']))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  for r in rows:
    print('  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[-1])
