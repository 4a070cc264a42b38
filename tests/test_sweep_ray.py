"""The Ray engine: the same tiny sweep run by the local engine and as Ray Tune trials gives the same results.csv
rows (training is deterministic); a rerun on Ray skips finished trials and lists a failed one; bad engine flags
are one-line errors that write nothing."""
import csv
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from maasjax.cli import main

SWEEP = '''
CONFIG = {config!r}
def get_sweep(h):
  trials = h.product([h.fixed('config.num_train_steps', 20), h.fixed('config.log_every_steps', 10),
                      h.fixed('config.eval_every_steps', 20), h.fixed('config.checkpoint.every_steps', 20),
                      h.sweep('config.seed', [0])])
  return h.chainit([trials, {extra}])
'''
# A trial the trainer refuses in a few seconds (a bad model setting).
REFUSED = "h.fixed('config.model.features', (0,))"


def _rows(workdir):
  """results.csv as {trial name: its metrics}, without the timings (wall_time_s differs run to run)."""
  with open(workdir / 'results.csv') as f:
    return {r['trial']: {k: v for k, v in r.items() if '/' in k} for r in csv.DictReader(f)}


def test_ray_engine_gives_the_local_engines_rows_and_skips_finished_trials_on_rerun(tmp_path):
  config = os.path.join(ROOT, 'experiments', 'digits_cnn.py')
  local_sweep, ray_sweep = tmp_path / 'tiny.py', tmp_path / 'tiny_and_refused.py'
  local_sweep.write_text(SWEEP.format(config=config, extra='[]'))
  ray_sweep.write_text(SWEEP.format(config=config, extra=REFUSED))
  local, on_ray = tmp_path / 'local', tmp_path / 'ray'
  cmd = [sys.executable, '-m', 'maasjax.cli', 'sweep']
  # The two engines at once (a trial is mostly one busy thread: imports, compiles); one trial each, and Ray also
  # runs a trial the trainer refuses, reported as the local engine reports one.
  procs = [subprocess.Popen(cmd + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for args in ([str(local_sweep), '--workdir', str(local)],
                        [str(ray_sweep), '--workdir', str(on_ray), '--engine', 'ray'])]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 1], outs[0][-2000:] + outs[1][-2000:]  # 1: Ray's refused trial
  assert 'Ray Tune trial' in outs[1] and (on_ray / '.ray').is_dir()  # the trials really ran as Tune trials
  assert 'Ray Tune trial' not in outs[0] and not (local / '.ray').exists()
  assert 'sweep: started model.features=0 (Ray Tune trial' in outs[1]
  assert 'sweep: FAILED model.features=0 (exit code 2)' in outs[1]
  assert "model 'cnn' expects a non-empty tuple" in outs[1]  # the end of its train.log, as locally
  rows = _rows(local)
  assert list(rows) == ['num_train_steps=20,log_every_steps=10,eval_every_steps=20,checkpoint.every_steps=20,seed=0']
  assert {k: v for k, v in _rows(on_ray).items() if k in rows} == rows
  assert all(float(r['test/accuracy']) > 0.3 for r in rows.values())  # 20 steps: well above chance (0.1)

  # The rerun finds the trial finished before Ray starts and does not retrain it.
  summaries = [on_ray / name / 'summary.json' for name in rows]
  before = [os.stat(p).st_mtime_ns for p in summaries]
  rerun = subprocess.run(cmd + [str(local_sweep), '--workdir', str(on_ray), '--engine', 'ray'], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  assert rerun.stdout.count('already finished; skipped') == 1 and 'sweep: started' not in rerun.stdout
  assert [os.stat(p).st_mtime_ns for p in summaries] == before  # not retrained
  assert {k: v for k, v in _rows(on_ray).items() if k in rows} == rows


@pytest.mark.parametrize('flags, message', [
    (['--engine', 'ray', '--resources', 'cpu=1'], 'is not JSON'),
    (['--engine', 'ray', '--resources', '[1]'], 'expected a JSON object'),
    (['--engine', 'ray', '--resources', '{"TPU": 0}'], "'TPU' is 0; expected a positive number"),
    (['--engine', 'ray', '--resources', '{"cpu": "one"}'], "'cpu' is 'one'; expected a positive number"),
    (['--ray-address', 'auto'], '--ray-address is for --engine ray'),
    (['--resources', '{"cpu": 1}'], '--resources is for --engine ray'),
])
def test_bad_engine_flags_are_one_line_errors_and_write_nothing(tmp_path, capsys, flags, message):
  workdir = tmp_path / 'sweep'
  sweep_file = os.path.join(ROOT, 'experiments', 'sweeps', 'digits_cnn_lr.py')
  assert main(['sweep', sweep_file, '--workdir', str(workdir), *flags]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count('\n') == 1, err
  assert not workdir.exists()


def test_ray_engine_without_ray_installed_says_which_extra(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'ray', None)  # `import ray` now fails as it does where ray is not installed
  workdir = tmp_path / 'sweep'
  sweep_file = os.path.join(ROOT, 'experiments', 'sweeps', 'digits_cnn_lr.py')
  assert main(['sweep', sweep_file, '--workdir', str(workdir), '--engine', 'ray']) == 2
  err = capsys.readouterr().err
  assert "pip install 'maasjax[ray]'" in err and err.count('\n') == 1, err
  assert not workdir.exists()
