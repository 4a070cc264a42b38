"""Kill-and-resume: a run SIGKILLed part way and resumed ends bit-identical to one never stopped.

These run with JAX's default RNG mode (jax_threefry_partitionable true, what users run), not the classic
mode the rest of the suite uses to compile faster (tests/conftest.py).
"""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, experiment_config, sigkill_after_checkpoint
from maasjax.train.loop import restore_latest, train_and_evaluate

STEPS = 400
ARGS = ['--config', 'experiments/digits_mlp.py', f'--config.num_train_steps={STEPS}',
        '--config.checkpoint.every_steps=40', '--config.checkpoint.keep=2', '--config.log_every_steps=20',
        '--config.eval_every_steps=200', '--config.progress_bar=false']


def _config():
  return experiment_config('digits_mlp', num_train_steps=STEPS, log_every_steps=20, eval_every_steps=200,
                           **{'checkpoint.every_steps': 40, 'checkpoint.keep': 2})


USER_RNG = dict(os.environ, JAX_THREEFRY_PARTITIONABLE='true')


def _leaves(workdir):
  _, state, step = restore_latest(_config(), workdir)
  return step, [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def _saved_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
  reference = str(tmp_path / 'reference')
  with jax.threefry_partitionable(True):
    train_and_evaluate(_config(), reference)

  killed = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'maasjax.cli', 'train', '--workdir', killed, *ARGS]
  sigkill_after_checkpoint(cmd, killed, 120, env=USER_RNG)
  saved = _saved_steps(killed)
  assert saved and max(saved) < STEPS, f'the run was not killed part way: {saved}'

  resumed = subprocess.run(cmd, cwd=ROOT, env=USER_RNG, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from the checkpoint at step {max(saved)} of {STEPS}' in resumed.stdout
  import json
  summary = json.load(open(os.path.join(killed, 'summary.json')))
  assert 0 < summary['resumed_from_step'] < STEPS

  step_a, a = _leaves(reference)
  step_b, b = _leaves(killed)
  assert step_a == step_b == STEPS
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)  # bit for bit, not approximately
  # The metrics log has each logged step exactly once, as if never interrupted.
  rows = [json.loads(l)['step'] for l in open(os.path.join(killed, 'metrics.jsonl'))]
  assert rows == list(range(20, STEPS + 1, 20))


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
  """A real `maasjax train` is SIGKILLed while Orbax writes a checkpoint (its temporary folder exists and the
  step's final folder does not): the previous complete step is the latest, and the same command resumes."""
  workdir = str(tmp_path / 'w')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # A wide MLP (~4.3M parameters, ~52 MB with AdamW's moments) saved every step: each write takes a while.
  cmd = [sys.executable, '-m', 'maasjax.cli', 'train', '--workdir', workdir, '--config', 'experiments/digits_mlp.py',
         '--config.model.hidden=(2048,2048)', '--config.num_train_steps=400', '--config.checkpoint.every_steps=1',
         '--config.checkpoint.keep=2', '--config.log_every_steps=50', '--config.eval_every_steps=400',
         '--config.progress_bar=false']
  cut_short = None
  for _ in range(5):  # the kill may land just after a rename: then try again on the next write
    proc = subprocess.Popen(cmd, cwd=ROOT, env=USER_RNG, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
      while time.time() < deadline and proc.poll() is None:
        names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
        writing = [n for n in names if 'orbax-checkpoint-tmp' in n and n.split('.')[0].isdigit()]
        if writing and _saved_steps(workdir):
          break
        time.sleep(0.002)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    names = os.listdir(ckpt_dir)
    unfinished = {int(n.split('.')[0]) for n in names if 'orbax-checkpoint-tmp' in n} - set(_saved_steps(workdir))
    if unfinished:
      cut_short = max(unfinished)
      break
  assert cut_short is not None, 'no checkpoint write was caught part way in 5 tries'
  complete = _saved_steps(workdir)
  assert complete and max(complete) < cut_short
  manager = ocp.CheckpointManager(ckpt_dir)
  assert manager.latest_step() == max(complete)
  manager.close()
  resumed = subprocess.run(cmd + [f'--config.num_train_steps={max(complete) + 3}'], cwd=ROOT, env=USER_RNG,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resuming from the checkpoint at step {max(complete)}' in resumed.stdout
  assert _saved_steps(workdir)[-1] == max(complete) + 3
