"""Helpers for export and serving tests: tiny trained models exported once, and real servers.

The `exported` fixture itself is defined in conftest.py: a fixture imported into several test
modules becomes one fixture per module, and each would train and export the models again.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

from conftest import ROOT, experiment_config

STEPS = 20


def train_tiny(name: str, workdir: str) -> str:
  from maasjax.train.loop import train_and_evaluate
  config = experiment_config(name, num_train_steps=STEPS, **{'optimizer.warmup_steps': 5,
                                                             'checkpoint.every_steps': STEPS})
  train_and_evaluate(config, workdir)
  return workdir


def build_exported(tmp_path_factory):
  """{'base': base path, 'workdirs': {...}, 'results': {model: ExportResult}} for the CNN and the ResNet."""
  from maasjax import cli
  from maasjax.config import from_json
  from maasjax.export.exporter import export_workdir
  root = tmp_path_factory.mktemp('export')
  base = str(root / 'models')
  workdirs = {'digits': train_tiny('digits_cnn', str(root / 'cnn')),
              'digits_resnet': train_tiny('digits_resnet', str(root / 'resnet'))}
  with open(os.path.join(workdirs['digits'], 'config.json')) as f:
    results = {'digits': export_workdir(from_json(f.read()), workdirs['digits'], 'digits', base)}
  # The ResNet goes through the CLI, reading its config from the workdir (no --config).
  assert cli.main(['export', '--workdir', workdirs['digits_resnet'], '--model-name', 'digits_resnet',
                   '--out', base]) == 0
  return {'base': base, 'workdirs': workdirs, 'results': results}


def jax_reference(workdir: str, x: np.ndarray) -> dict:
  """The JAX outputs of the workdir's checkpoint, computed straight from the training code."""
  import jax
  from maasjax.config import from_json
  from maasjax.export.signatures import signatures_for
  from maasjax.train.loop import restore_latest
  with open(os.path.join(workdir, 'config.json')) as f:
    exp, state, _ = restore_latest(from_json(f.read()), workdir)
  sig = signatures_for(exp.task, exp.model)['serving_default']
  out = jax.jit(sig.fn)({'params': state.params, **state.model_state}, {'inputs': x})
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


def heldout_digits(n: int) -> np.ndarray:
  from maasjax.data import load_dataset
  ds = load_dataset(experiment_config('digits_cnn'))
  return np.asarray(next(ds.eval_batches('test', n))['inputs'])


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class ServerProcess:
  """`maasjax serve` in a subprocess on 127.0.0.1 and a free port.

  The server answers at once while its models load; `wait='ready'` (default) returns once the first scan
  has loaded what it could (/v2/health/ready 200), `wait='live'` as soon as the port answers.
  """

  def __init__(self, base: str, *args: str, env: dict | None = None, timeout: float = 180, wait: str = 'ready'):
    self.port = free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self.timeout = timeout
    self.log_path = os.path.join(base, f'.server-{self.port}.log')
    self.log = open(self.log_path, 'w')
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'maasjax.cli', 'serve', '--model-base-path', base, '--port', str(self.port), *args],
        cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
    self.wait_for('/v2/health/live')
    if wait == 'ready':
      self.wait_for('/v2/health/ready')

  def wait_for(self, path: str) -> None:
    """Until GET `path` answers 200 (the process must stay up meanwhile)."""
    deadline = time.time() + self.timeout
    while time.time() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError(f'server exited with {self.proc.returncode}:\n{self.output()}')
      with contextlib.suppress(httpx.HTTPError):
        if httpx.get(self.url + path, timeout=1).status_code == 200:
          return
      time.sleep(0.1)
    self.stop()
    raise RuntimeError(f'server did not answer 200 on {path} in {self.timeout} s:\n{self.output()}')

  def output(self) -> str:
    self.log.flush()
    with open(self.log_path) as f:
      return f.read()

  def stop(self, timeout: float = 60) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.log.close()
    return self.proc.returncode


def wait_for_workers(srv: 'ServerProcess', workers: int, models, timeout: float = 180) -> None:
  """Until every worker has loaded every one of `models` (each worker loads its own copy; the pooled
  /metrics count says how many did): a worker that is still loading answers 503."""
  deadline = time.time() + timeout
  while True:
    text = httpx.get(srv.url + '/metrics').text
    counts = [sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith(f'maasjax_model_events_total{{event="loaded",model="{m}"}}')) for m in models]
    if min(counts) >= workers:
      return
    assert time.time() < deadline, srv.output()
    time.sleep(0.3)


def copy_version(base: str, src_model: str, src_version: int, dst_model: str, dst_version: int) -> None:
  """Copies a version into place the way an exporter should: a temp name, then one atomic rename."""
  dst_dir = os.path.join(base, dst_model)
  os.makedirs(dst_dir, exist_ok=True)
  tmp = os.path.join(dst_dir, f'.incoming-{dst_version}')
  shutil.copytree(os.path.join(base, src_model, str(src_version)), tmp)
  os.rename(tmp, os.path.join(dst_dir, str(dst_version)))


def write_broken_version(base: str, model: str, version: int) -> None:
  path = os.path.join(base, model, str(version))
  os.makedirs(path)
  with open(os.path.join(path, 'saved_model.pb'), 'wb') as f:
    f.write(b'this is not a SavedModel')
