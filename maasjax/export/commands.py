"""`maasjax export` and `maasjax models`: thin CLI over the exporter and the base-path catalog."""
from __future__ import annotations

import json
import os

from maasjax.cli import command
from maasjax.config import ConfigError, from_json, load_config


def _export_args(p):
  p.add_argument('--config', help='experiment config file; default: the workdir\'s config.json')
  p.add_argument('--workdir', required=True, help='the trained workdir (checkpoints/, config.json)')
  p.add_argument('--model-name', required=True, help='name in URLs and in OUT/NAME/VERSION')
  p.add_argument('--version', type=int, help='version number (default: the next free one)')
  p.add_argument('--out', default='exports', help='model base path (default: exports)')
  p.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  p.add_argument('--platforms', default='cpu,cuda,tpu', help='platforms to lower for (default: cpu,cuda,tpu)')
  p.add_argument('--parity-examples', type=int, default=64, help='held-out inputs for the parity check')


def config_for_workdir(config_path, workdir, overrides):
  if config_path:
    return load_config(config_path, overrides)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'workdir {workdir!r} has no config.json; pass --config (the experiment that trained it) '
                      'or train first with maasjax train')
  if overrides:
    raise ConfigError('--config.* overrides need --config; without it the workdir\'s config.json is used as is')
  with open(path) as f:
    return from_json(f.read())


@command('export', 'export a workdir\'s checkpoint as a TF SavedModel at OUT/NAME/VERSION (parity-checked)', _export_args)
def cmd_export(args, overrides):
  from maasjax.export.exporter import export_workdir
  platforms = tuple(p.strip() for p in args.platforms.split(',') if p.strip())
  unknown = sorted(set(platforms) - {'cpu', 'cuda', 'rocm', 'tpu'})
  if unknown or not platforms:
    raise ConfigError(f'--platforms {args.platforms!r}: expected a comma list of cpu, cuda, rocm, tpu')
  config = config_for_workdir(args.config, args.workdir, overrides)
  result = export_workdir(config, args.workdir, args.model_name, args.out, args.version, platforms,
                          args.parity_examples, args.step)
  print(f'exported {result.path} in {result.seconds:.1f} s; parity on {result.num_examples} held-out inputs: '
        + ', '.join(f'{k}={v:.2g}' for k, v in result.max_abs_diff.items()))


def _models_args(p):
  p.add_argument('--model-base-path', required=True, help='folder of NAME/VERSION/ SavedModels')
  p.add_argument('--json', action='store_true', help='print JSON instead of a table')


@command('models', 'list every model and version under a base path (task, inputs, size, test metrics)', _models_args)
def cmd_models(args, overrides):
  from maasjax.export.layout import catalog
  entries = catalog(args.model_base_path)
  if args.json:
    print(json.dumps(entries, indent=2))
    return
  if not entries:
    print(f'no models under {args.model_base_path}')
    return
  rows = [('MODEL', 'VERSION', 'TASK', 'INPUTS', 'SIZE', 'TEST METRICS')]
  for e in entries:
    inputs = ' '.join(f'{k}:{v["dtype"]}{v["shape"]}' for k, v in e['inputs'].items()) or '-'
    metrics = ' '.join(f'{k[5:]}={v:.4g}' for k, v in e['metrics'].items()) or '-'
    rows.append((e['name'], str(e['version']), e['task'], inputs, f'{e["size_bytes"] / 1e6:.2f} MB',
                 metrics if 'error' not in e else e['error']))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  for r in rows:
    print('  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[-1])
