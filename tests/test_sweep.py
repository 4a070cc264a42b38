"""Sweeps: the h vocabulary, and a real sweep killed part way (whole process group), rerun, and tabulated."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from maasjax.config import ConfigError
from maasjax.sweep import hyper, runner


def test_the_h_vocabulary():
  trials = hyper.product([hyper.sweep('config.optimizer.learning_rate', [1e-3, 3e-3]),
                          hyper.sweep('config.seed', [0, 1])])
  assert trials == [{'config.optimizer.learning_rate': 1e-3, 'config.seed': 0},
                    {'config.optimizer.learning_rate': 1e-3, 'config.seed': 1},
                    {'config.optimizer.learning_rate': 3e-3, 'config.seed': 0},
                    {'config.optimizer.learning_rate': 3e-3, 'config.seed': 1}]
  zipped = hyper.zipit([hyper.sweep('config.seed', [0, 1]), hyper.sweep('config.batch_size', [32, 64])])
  assert zipped == [{'config.seed': 0, 'config.batch_size': 32}, {'config.seed': 1, 'config.batch_size': 64}]
  assert hyper.chainit([hyper.fixed('config.seed', 3), zipped]) == [{'config.seed': 3}] + zipped
  assert runner.trial_names(trials)[1] == 'optimizer.learning_rate=0.001,seed=1'
  assert len(set(runner.trial_names(trials + trials))) == 8  # unique even when repeated
  with pytest.raises(ConfigError, match='expected equal lengths'):
    hyper.zipit([hyper.sweep('config.seed', [0]), hyper.sweep('config.batch_size', [32, 64])])
  with pytest.raises(ConfigError, match='expected a dotted config key'):
    hyper.sweep('optimizer.learning_rate', [1e-3])


SWEEP = '''
CONFIG = {config!r}
def get_sweep(h):
  return h.chainit([h.product([h.fixed('config.num_train_steps', 30), h.fixed('config.log_every_steps', 10),
                               h.fixed('config.eval_every_steps', 30), h.fixed('config.checkpoint.every_steps', 10),
                               h.sweep('config.seed', [0, 1, 2])]),
                    h.fixed('config.model.hidden', (0,))])  # refused by the trainer: listed, does not stop the rest
'''


def test_sweep_killed_part_way_resumes_without_retraining_and_tabulates(tmp_path):
  sweep_file = tmp_path / 'tiny.py'
  sweep_file.write_text(SWEEP.format(config=os.path.join(ROOT, 'experiments', 'digits_mlp.py')))
  workdir = tmp_path / 'sweep'
  cmd = [sys.executable, '-m', 'maasjax.cli', 'sweep', str(sweep_file), '--workdir', str(workdir)]
  first = workdir / 'num_train_steps=30,log_every_steps=10,eval_every_steps=30,checkpoint.every_steps=10,seed=0'
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  try:
    while not (first / 'summary.json').exists():
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.1)
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every trial it started
    proc.wait()
  before = ((first / 'summary.json').read_bytes(), os.stat(first / 'summary.json').st_mtime_ns)
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 1, done.stderr[-2000:]  # a trial failed: scripts see it; the rest is tabulated
  assert f'{first.name} already finished; skipped' in done.stdout
  assert 'FAILED model.hidden=0' in done.stdout and 'config.model.hidden=(0,)' in done.stdout
  assert ((first / 'summary.json').read_bytes(), os.stat(first / 'summary.json').st_mtime_ns) == before
  rows = list(csv.DictReader(open(workdir / 'results.csv')))
  assert sorted(r['seed'] for r in rows) == ['0', '1', '2'] and all(float(r['test/accuracy']) > 0.2 for r in rows)
  table = (workdir / 'results.md').read_text()
  assert '±' in table and '**best**' in table and '| 3 |' in table  # one setting, 3 seeds
  assert (workdir / 'results_curves.png').exists()
