"""Runs a sweep on this machine: every trial its own `maasjax train` process (a fresh JAX runtime each, as a
TPU VM requires) in DIR/<trial name>/. Finished trials (summary.json written) are skipped, interrupted ones
resume from their checkpoints (the trainer does that by itself), a failed one does not stop the others.

`--parallel N` splits the cores: each running trial is pinned (sched_setaffinity, like `taskset`) to its own
len(cores) / N cores, and XLA's CPU thread pool follows the affinity, so N trials do not fight over cores.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from typing import Any

from maasjax.config import ConfigError
from maasjax.sweep import hyper

Trial = dict[str, Any]


def _load_module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f'sweep file {path!r} does not exist; expected a Python file with get_sweep(h) and CONFIG')
  spec = importlib.util.spec_from_file_location('maasjax_sweep_' + re.sub(r'\W', '_', path), path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a broken sweep file is the user's to fix: say where
    raise ConfigError(f'sweep file {path!r} failed to load: {type(e).__name__}: {e}') from None
  return module


def load_sweep(sweep_file: str | None = None, config_file: str | None = None) -> tuple[str, list[Trial]]:
  """(base config path, trials) from a sweep file (CONFIG + get_sweep(h)) or a config with get_hyper(h)."""
  if config_file:
    module, base, fn = _load_module(config_file), config_file, 'get_hyper'
  elif sweep_file:
    module, fn = _load_module(sweep_file), 'get_sweep'
    base = getattr(module, 'CONFIG', None)
    if not isinstance(base, str):
      raise ConfigError(f'sweep file {sweep_file!r} has no CONFIG = "experiments/....py" naming its base config')
    if not os.path.isfile(base):  # relative to the repository root (the working directory) or to the file
      base = os.path.join(os.path.dirname(os.path.abspath(sweep_file)), base)
    if not os.path.isfile(base):
      raise ConfigError(f'{sweep_file}: CONFIG {module.CONFIG!r} does not exist (relative to the working '
                        'directory or to the sweep file)')
  else:
    raise ConfigError('maasjax sweep needs a sweep file (SWEEP.py) or --config with get_hyper(h)')
  if not hasattr(module, fn):
    raise ConfigError(f'{config_file or sweep_file} has no {fn}(h) function')
  trials = getattr(module, fn)(hyper)
  if not isinstance(trials, list) or not trials or not all(isinstance(t, dict) for t in trials):
    raise ConfigError(f'{fn}(h) returned {type(trials).__name__}; expected a non-empty list of trials, e.g. '
                      "h.product([h.sweep('config.seed', [0, 1])])")
  return base, trials


def _short(value: Any) -> str:
  """A value as a folder-name part: 0.003, adamw, 128x128 for a tuple (no '/', ',' or spaces)."""
  if isinstance(value, (tuple, list)):
    return 'x'.join(_short(v) for v in value) or 'empty'
  return re.sub(r'[^A-Za-z0-9_.+-]', '', str(value)) or 'empty'


def trial_names(trials: list[Trial]) -> list[str]:
  """Readable and unique: 'optimizer.learning_rate=0.003,seed=1' (the overrides without 'config.')."""
  names, seen = [], {}
  for trial in trials:
    name = ','.join(f'{k[len("config."):]}={_short(v)}' for k, v in trial.items()) or 'base'
    count = seen.get(name, 0)
    seen[name] = count + 1
    names.append(name if count == 0 else f'{name}#{count}')
  return names


def is_finished(trial_dir: str) -> bool:
  return os.path.exists(os.path.join(trial_dir, 'summary.json'))


def command(base: str, trial_dir: str, trial: Trial) -> list[str]:
  """The trial's `maasjax train` command line (the Python of the process that starts it, local or a Ray worker)."""
  overrides = [f'--{k}={v!r}' if isinstance(v, (tuple, list)) else f'--{k}={v}' for k, v in trial.items()]
  return [sys.executable, '-m', 'maasjax.cli', 'train', '--config', base, '--workdir', trial_dir, *overrides,
          '--config.progress_bar=false']


def open_log(trial_dir: str):
  """The trial's train.log, appended to (a resumed trial keeps the earlier attempts' output)."""
  os.makedirs(trial_dir, exist_ok=True)
  return open(os.path.join(trial_dir, 'train.log'), 'a')


def log_tail(trial_dir: str, lines: int = 5) -> str:
  path = os.path.join(trial_dir, 'train.log')
  if not os.path.exists(path):
    return '(no train.log: the trial never started)\n'
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def pending(trials: list[Trial], workdir: str) -> tuple[list[tuple[str, Trial]], list[str]]:
  """(the trials still to run as (name, trial), the names of finished ones): a finished trial has summary.json."""
  todo, skipped = [], []
  for name, trial in zip(trial_names(trials), trials):
    if is_finished(os.path.join(workdir, name)):
      skipped.append(name)
      print(f'sweep: {name} already finished; skipped', flush=True)
    else:
      todo.append((name, trial))
  return todo, skipped


def run_local(base: str, trials: list[Trial], workdir: str, parallel: int = 1) -> dict[str, Any]:
  """Runs what is not finished, `parallel` at a time; returns {'done', 'skipped', 'failed': {name: log tail}}."""
  from tqdm.auto import tqdm
  os.makedirs(workdir, exist_ok=True)
  todo, skipped = pending(trials, workdir)
  cores = sorted(os.sched_getaffinity(0))
  per = max(1, len(cores) // max(1, parallel))
  free_slots = list(range(max(1, parallel)))
  running: dict[int, tuple[subprocess.Popen, str, Any, int]] = {}
  failed, done = {}, []
  bar = tqdm(total=len(trials), initial=len(skipped), unit='trial', desc='sweep', dynamic_ncols=True)
  queue = list(todo)
  try:
    while queue or running:
      while queue and free_slots:
        slot = free_slots.pop(0)
        name, trial = queue.pop(0)
        trial_dir = os.path.join(workdir, name)
        log = open_log(trial_dir)
        mine = set(cores[(slot * per) % len(cores):(slot * per) % len(cores) + per]) or set(cores)
        proc = subprocess.Popen(command(base, trial_dir, trial), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine))
        running[proc.pid] = (proc, name, log, slot)
        bar.write(f'sweep: started {name} (cores {sorted(mine)})')
      time.sleep(0.2)
      for pid, (proc, name, log, slot) in list(running.items()):
        if proc.poll() is None:
          continue
        log.close()
        del running[pid]
        free_slots.append(slot)
        bar.update(1)
        if proc.returncode == 0 and is_finished(os.path.join(workdir, name)):
          done.append(name)
          bar.write(f'sweep: finished {name}')
        else:
          failed[name] = log_tail(os.path.join(workdir, name))
          bar.write(f'sweep: FAILED {name} (exit code {proc.returncode})')
  finally:
    for proc, *_ in running.values():  # interrupted: the trials resume from their checkpoints next time
      proc.terminate()
    bar.close()
  return {'done': done, 'skipped': skipped, 'failed': failed}
