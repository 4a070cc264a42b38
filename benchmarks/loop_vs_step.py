r"""The training loop's throughput against its bare train step, for digits_cnn and mnist_cnn, in one run.

  .venv/bin/python benchmarks/loop_vs_step.py [--quick] [--json FILE]

bare: `setup(config)`'s jit'd step on batches already on the device, nothing else.
loop: `maasjax.train.loop.train_and_evaluate` on the same config (data built per step, prefetched,
metrics pulled every log_every_steps, progress, checkpoint manager), periodic eval and checkpoints
moved past the end. Its training throughput is read from what it writes: `summary.json`'s
train_steps_per_second, and the log windows of metrics.jsonl after the first (which holds the
compilation), summed (total steps / total time): the same figure without the final checkpoint save.
The loop runs with config.prefetch_batches=2 (batches built on a thread) and 0 (inline: the default on CPU).
MNIST runs under tfds.testing.mock_data (MNIST's shape and dtype). bare and loop alternate, medians.
Run it as the CLI runs (the GLIBC_TUNABLES of maasjax/cli.py): it re-executes itself with that set. Each
config runs in its own process, with its experiment's config.cpu_async_dispatch, as `maasjax train` runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'digits_cnn': dict(batch=64, steps=600), 'mnist_cnn': dict(batch=128, steps=80)}


def config_for(name: str, steps: int, prefetch: int = 2):
  from maasjax.config import load_config
  c = load_config(os.path.join(ROOT, 'experiments', f'{name}.py'))
  c.num_train_steps = steps + 1  # the first step compiles
  c.batch_size = CONFIGS[name]['batch']
  c.eval_every_steps = c.checkpoint.every_steps = 10 * steps
  c.log_every_steps = max(1, steps // 8)
  c.progress_bar = False
  c.prefetch_batches = prefetch
  return c


def data_context(name: str):
  if name == 'mnist_cnn':
    import tensorflow_datasets as tfds
    return tfds.testing.mock_data(num_examples=1024)
  return contextlib.nullcontext()


def bare_rate(exp, steps: int) -> float:
  import jax
  from maasjax import parallel
  bs = exp.config.batch_size
  batches = [parallel.global_batch(exp.mesh, exp.dataset.train_batch(s, bs), exp.steps.batch_sharding)
             for s in range(8)]
  state = exp.steps.init()
  for s in range(3):
    state, sums = exp.steps.train_step(state, batches[s])
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for s in range(steps):
    state, sums = exp.steps.train_step(state, batches[s % 8])
  jax.block_until_ready((state, sums))
  return steps / (time.perf_counter() - t0)


def loop_rates(name: str, steps: int, prefetch: int) -> tuple[float, float]:
  from maasjax.train.loop import train_and_evaluate
  with tempfile.TemporaryDirectory() as workdir, data_context(name):
    with contextlib.redirect_stdout(sys.stderr):
      summary = train_and_evaluate(config_for(name, steps, prefetch), workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  windows = [(b['step'] - a['step'], b['train/steps_per_second']) for a, b in zip(rows, rows[1:])]
  window_rate = sum(n for n, _ in windows) / sum(n / r for n, r in windows)
  return summary['train_steps_per_second'], window_rate


def run_each_in_its_own_process(names: list[str], args) -> int:
  import subprocess
  results = []
  for name in names:
    with tempfile.NamedTemporaryFile(suffix='.json') as out:
      cmd = [sys.executable, os.path.abspath(__file__), '--configs', name, '--json', out.name]
      if subprocess.run(cmd + (['--quick'] if args.quick else [])).returncode:
        raise SystemExit(f'the {name} run failed; its error is above')
      with open(out.name) as f:
        results += json.load(f)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='2 loop runs per config and setting instead of 3')
  p.add_argument('--configs', default='digits_cnn,mnist_cnn')
  p.add_argument('--json', help='also write the results to this file')
  args = p.parse_args(argv)
  if 'GLIBC_TUNABLES' not in os.environ:  # the allocator `maasjax train` runs with
    sys.path.insert(0, ROOT)
    from maasjax.cli import FAST_ALLOCATOR_ENV
    os.environ.update(FAST_ALLOCATOR_ENV)
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, ROOT)
  import absl.logging
  absl.logging.set_verbosity(absl.logging.ERROR)
  names = args.configs.split(',')
  if len(names) > 1:  # JAX's CPU dispatch is per process and per experiment: one process per config
    return run_each_in_its_own_process(names, args)
  from maasjax import parallel
  parallel.apply_cpu_dispatch(config_for(names[0], 1))  # before the CPU backend starts, as `maasjax train`
  from maasjax.train.loop import setup
  runs = 2 if args.quick else 3
  results = []
  import jax
  print(f'load {os.getloadavg()[0]:.2f}; GLIBC_TUNABLES={os.environ["GLIBC_TUNABLES"]}; '
        f'jax_cpu_enable_async_dispatch={jax.config.values["jax_cpu_enable_async_dispatch"]}', flush=True)
  for name in names:
    steps = CONFIGS[name]['steps']
    with data_context(name):
      exp = setup(config_for(name, steps))
    bare, summary, window = [bare_rate(exp, steps)], {p: [] for p in (2, 0)}, {p: [] for p in (2, 0)}
    for _ in range(runs):  # alternate: bare, loop (prefetch 2), loop (prefetch 0, inline), bare, ...
      for prefetch in (2, 0):
        s, w = loop_rates(name, steps, prefetch)
        summary[prefetch].append(s)
        window[prefetch].append(w)
      bare.append(bare_rate(exp, steps))
    r = {'config': name, 'batch_size': CONFIGS[name]['batch'], 'steps': steps,
         'bare_steps_per_second': statistics.median(bare), 'bare_runs': bare}
    line = f'{name}: bare {r["bare_steps_per_second"]:.1f} steps/s {[round(x, 1) for x in bare]}'
    for prefetch in (2, 0):
      key = f'loop_prefetch{prefetch}'
      r[f'{key}_summary_steps_per_second'] = statistics.median(summary[prefetch])
      r[f'{key}_window_steps_per_second'] = statistics.median(window[prefetch])
      r[f'{key}_over_bare_summary'] = r[f'{key}_summary_steps_per_second'] / r['bare_steps_per_second']
      r[f'{key}_over_bare_window'] = r[f'{key}_window_steps_per_second'] / r['bare_steps_per_second']
      r[f'{key}_runs'] = {'summary': summary[prefetch], 'window': window[prefetch]}
      line += (f'; loop prefetch={prefetch}: summary.json {r[f"{key}_summary_steps_per_second"]:.1f} '
               f'({100 * r[f"{key}_over_bare_summary"]:.0f}%), log windows {r[f"{key}_window_steps_per_second"]:.1f} '
               f'({100 * r[f"{key}_over_bare_window"]:.0f}%) {[round(x, 1) for x in window[prefetch]]}')
    print(line, flush=True)
    results.append(r)
  print(f'load after {os.getloadavg()[0]:.2f}', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
