"""`maasjax sweep SWEEP.py --workdir DIR [--parallel N] [--engine ray ...]` and `maasjax results DIR`."""
from __future__ import annotations

import json
import os


def sweep_args(p) -> None:
  p.add_argument('sweep', nargs='?', help='a sweep file: CONFIG = "experiments/x.py" and get_sweep(h)')
  p.add_argument('--config', help='instead of a sweep file: an experiment config that defines get_hyper(h)')
  p.add_argument('--workdir', required=True, help='one folder per trial goes here, plus results.*')
  p.add_argument('--parallel', type=int, default=1,
                 help='trials at once on this machine (the cores are split); with --engine ray and no '
                      '--ray-address, the local Ray instance\'s CPUs')
  p.add_argument('--engine', default='local', choices=('local', 'ray'),
                 help='local (one maasjax train process per trial on this machine) or ray (the same trials as '
                      "Ray Tune trials; pip install 'maasjax[ray]'; docs/sweeps.md)")
  p.add_argument('--resources', help='--engine ray: what each trial holds, as JSON (default {"cpu": 1}), e.g. '
                                     '\'{"TPU": 4}\' or \'{"gpu": 1}\'')
  p.add_argument('--ray-address', help='--engine ray: an existing Ray cluster (auto inside ray job submit, or HEAD_IP:6379); '
                                       'without it a local Ray instance with --parallel CPUs')


def sweep(args, overrides) -> int:
  """Runs the trials; exit status 1 when any failed (after listing them and tabulating the rest), else 0."""
  from maasjax.config import ConfigError
  from maasjax.sweep import results, runner
  if args.parallel < 1:
    raise ConfigError(f'--parallel {args.parallel}: expected an integer >= 1')
  if args.engine == 'ray':
    from maasjax.sweep import ray_engine
    resources = ray_engine.parse_resources(args.resources or '{"cpu": 1}')
    ray_engine.require_ray()
  else:
    for flag, value in (('--resources', args.resources), ('--ray-address', args.ray_address)):
      if value is not None:
        raise ConfigError(f'{flag} is for --engine ray; the local engine splits this machine\'s cores (--parallel)')
  base, trials = runner.load_sweep(args.sweep, args.config)
  names = runner.trial_names(trials)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, 'sweep.json'), 'w') as f:
    json.dump({'config': base, 'trials': dict(zip(names, trials))}, f, indent=2)
  t0 = __import__('time').time()
  if args.engine == 'ray':
    outcome = ray_engine.run_ray(base, trials, args.workdir, resources, args.ray_address, args.parallel)
  else:
    outcome = runner.run_local(base, trials, args.workdir, args.parallel)
  print(f'sweep: {len(outcome["done"])} trained, {len(outcome["skipped"])} already finished, '
        f'{len(outcome["failed"])} failed, in {__import__("time").time() - t0:.1f} s', flush=True)
  for name, tail in outcome['failed'].items():
    print(f'sweep: FAILED {name}; the end of {os.path.join(args.workdir, name, "train.log")}:\n{tail}', flush=True)
  if len(outcome['failed']) < len(trials):
    paths = results.write(args.workdir)
    print('sweep: wrote ' + ', '.join(paths.values()), flush=True)
  return 1 if outcome['failed'] else 0


def results_args(p) -> None:
  p.add_argument('workdir', help='a folder written by maasjax sweep')


def results(args, overrides) -> None:
  from maasjax.sweep import results as results_lib
  paths = results_lib.write(args.workdir)
  with open(paths['md']) as f:
    print(f.read())
  print('wrote ' + ', '.join(paths.values()))
