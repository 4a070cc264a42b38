"""Kill-and-resume: a run SIGKILLed part way and resumed ends bit-identical to one never stopped."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, experiment_config
from maasjax.train.loop import restore_latest, train_and_evaluate

STEPS = 400
ARGS = ['--config', 'experiments/digits_mlp.py', f'--config.num_train_steps={STEPS}',
        '--config.checkpoint.every_steps=40', '--config.checkpoint.keep=2', '--config.log_every_steps=20',
        '--config.eval_every_steps=200', '--config.progress_bar=false']


def _config():
  return experiment_config('digits_mlp', num_train_steps=STEPS, log_every_steps=20, eval_every_steps=200,
                           **{'checkpoint.every_steps': 40, 'checkpoint.keep': 2})


def _leaves(workdir):
  _, state, step = restore_latest(_config(), workdir)
  import jax
  return step, [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def _saved_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
  reference = str(tmp_path / 'reference')
  train_and_evaluate(_config(), reference)

  killed = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'maasjax.cli', 'train', '--workdir', killed, *ARGS]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  try:
    while time.time() < deadline and not any(s >= 120 for s in _saved_steps(killed)):
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  saved = _saved_steps(killed)
  assert saved and max(saved) < STEPS, f'the run was not killed part way: {saved}'

  resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
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


def test_half_written_checkpoint_is_never_restored(tmp_path):
  """A save cut short leaves only Orbax's temporary directory; the previous complete step is used."""
  workdir = str(tmp_path / 'w')
  config = experiment_config('digits_mlp', num_train_steps=40, log_every_steps=20, eval_every_steps=40,
                             **{'checkpoint.every_steps': 20})
  train_and_evaluate(config, workdir)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # What a kill during the save of step 60 leaves behind: a partial copy under a temporary name.
  partial = os.path.join(ckpt_dir, '60' + '.orbax-checkpoint-tmp-1234567')
  shutil.copytree(os.path.join(ckpt_dir, '40'), partial)
  for root, _, files in os.walk(partial):
    for f in files:
      with open(os.path.join(root, f), 'r+b') as fh:
        fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
  manager = ocp.CheckpointManager(ckpt_dir)
  assert manager.latest_step() == 40
  manager.close()
  config.num_train_steps = 60
  summary = train_and_evaluate(config, workdir)
  assert summary['resumed_from_step'] == 40
  assert _saved_steps(workdir)[-1] == 60
