"""Two processes on localhost joined by jax.distributed (CPU collectives over gloo) train, evaluate
and checkpoint through the CLI, and end where one process does; and the start-up's own rules."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from maasjax import distributed
from maasjax.config import ConfigError
from test_sharding import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['--config.model.features=(8, 16)', '--config.model.dense=32', '--config.batch_size=16',
        '--config.eval_batch_size=64', '--config.num_train_steps=6', '--config.optimizer.warmup_steps=1',
        '--config.log_every_steps=3', '--config.eval_every_steps=6', '--config.checkpoint.every_steps=3',
        '--config.checkpoint.keep=0', '--config.progress_bar=false']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, devices: int, extra=()):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS='cpu',
             # Same numbers either way; the classic counters compile ~20x faster on XLA:CPU
             # (see tests/mesh_worker.py).
             JAX_THREEFRY_PARTITIONABLE='false', XLA_FLAGS=FAST_COMPILE)
  cmd = [sys.executable, '-m', 'maasjax.cli', 'train', '--config', 'experiments/digits_cnn.py',
         '--workdir', str(workdir), *TINY, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=420) -> str:
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f'process timed out:\n{out[-3000:]}')
  assert proc.returncode == 0, out[-4000:]
  return out


def restore_params(workdir, step):
  from maasjax.config import load_config
  from maasjax.train import checkpoint as ckpt_lib
  from maasjax.train.loop import setup
  config = load_config(os.path.join(ROOT, 'experiments', 'digits_cnn.py'),
                       [(a[len('--config.'):].split('=', 1)[0], a.split('=', 1)[1]) for a in TINY])
  exp = setup(config)
  checkpointer = ckpt_lib.Checkpointer(str(workdir), 3, 0, async_save=False)
  try:
    state = checkpointer.restore(exp.steps.abstract_state, step)
  finally:
    checkpointer.close()
  return state


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  port = free_port()
  multi = [launch(tmp_path / 'multi', 2, [f'--config.distributed.coordinator_address=127.0.0.1:{port}',
                                          '--config.distributed.num_processes=2',
                                          f'--config.distributed.process_id={i}']) for i in range(2)]
  single = launch(tmp_path / 'single', 1)
  outs = [finish(p) for p in multi]
  finish(single)

  summaries = {name: json.loads((tmp_path / name / 'summary.json').read_text()) for name in ('multi', 'single')}
  assert summaries['multi']['devices'] == 4 and summaries['single']['devices'] == 1
  assert summaries['multi']['mesh'] == {'data': 4, 'fsdp': 1, 'model': 1}
  for key in ('eval/loss', 'eval/accuracy', 'test/loss', 'test/accuracy'):
    assert summaries['multi'][key] == pytest.approx(summaries['single'][key], rel=1e-5, abs=1e-6), key

  rows = {name: [json.loads(line) for line in (tmp_path / name / 'metrics.jsonl').read_text().splitlines()]
          for name in ('multi', 'single')}
  assert [r['step'] for r in rows['multi']] == [3, 6]  # process 0 alone wrote the log: no duplicates
  for a, b in zip(rows['multi'], rows['single']):
    assert a['train/loss'] == pytest.approx(b['train/loss'], rel=1e-5, abs=1e-6)
  assert 'step 6' in outs[0] and 'step 6' not in outs[1]  # only process 0 prints progress

  # Both processes wrote one checkpoint per save; restored here on one device it holds what the
  # single-process run holds.
  for step in (3, 6):
    multi_state, single_state = restore_params(tmp_path / 'multi', step), restore_params(tmp_path / 'single', step)
    assert int(multi_state.step) == step
    for a, b in zip(jax_leaves(multi_state.params), jax_leaves(single_state.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ---- when does the start-up join a cluster? -----------------------------------------------------

def cfg(**distributed_settings):
  from maasjax.defaults import base_config
  c = base_config()
  for k, v in distributed_settings.items():
    c.distributed[k] = v
  return c


def test_single_process_by_default(monkeypatch):
  for var in ('MAASJAX_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS', 'MAASJAX_NUM_PROCESSES',
              'MAASJAX_PROCESS_ID', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: False)
  assert distributed.initialize(cfg()) is False
  assert distributed.initialize(cfg(initialize='false', coordinator_address='10.0.0.1:1234')) is False


def test_settings_come_from_config_or_environment(monkeypatch):
  monkeypatch.setenv('MAASJAX_COORDINATOR_ADDRESS', '10.0.0.2:8476')
  monkeypatch.setenv('MAASJAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('MAASJAX_PROCESS_ID', '3')
  s = distributed._settings(cfg())
  assert (s['coordinator_address'], s['num_processes'], s['process_id']) == ('10.0.0.2:8476', 4, 3)
  s = distributed._settings(cfg(process_id=0, num_processes=2, coordinator_address='h:1'))
  assert (s['coordinator_address'], s['num_processes'], s['process_id']) == ('h:1', 2, 0)


def test_bad_settings_are_named(monkeypatch):
  monkeypatch.setattr(distributed, 'on_cloud_tpu_vm', lambda: False)
  for var in ('MAASJAX_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS', 'MAASJAX_NUM_PROCESSES',
              'MAASJAX_PROCESS_ID', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(ConfigError, match=r'config.distributed.initialize=.yes.: expected one of auto, true, false'):
    distributed.initialize(cfg(initialize='yes'))
  with pytest.raises(ConfigError, match=r'config.distributed.process_id=2: expected 0..1'):
    distributed.initialize(cfg(coordinator_address='h:1', num_processes=2, process_id=2))
  with pytest.raises(ConfigError, match=r'needs config.distributed.num_processes'):
    distributed.initialize(cfg(coordinator_address='h:1'))


def test_host_slices_of_an_augmented_batch_are_the_single_host_batch(config_factory):
  from maasjax.data import load_dataset
  ds = load_dataset(config_factory('digits_cnn'))  # random shifts on
  whole = ds.train_batch(7, 32)
  parts = [ds.train_batch(7, 32, process_index=i, process_count=4) for i in range(4)]
  for key in ('inputs', 'labels'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
