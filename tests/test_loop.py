"""The loop's own guarantees: no non-finite checkpoint, honest throughput, a finished workdir left alone."""
import json
import os
import time

import numpy as np
import pytest

from conftest import experiment_config
from maasjax.data import load_dataset
from maasjax.train.checkpoint import Checkpointer
from maasjax.train.loop import TrainingDiverged, restore_latest, train_and_evaluate


def _mlp(steps, **overrides):
  return experiment_config('digits_mlp', num_train_steps=steps, **overrides)


def test_a_diverged_state_is_never_checkpointed(tmp_path):
  """Checkpoints every 3 steps, logs every 10: the state goes non-finite between two log steps."""
  config = _mlp(40, log_every_steps=10, eval_every_steps=40,
                **{'checkpoint.every_steps': 3, 'optimizer.name': 'sgd', 'optimizer.learning_rate': 1e4,
                   'optimizer.warmup_steps': 0})
  with pytest.raises(TrainingDiverged, match='was not saved'):
    train_and_evaluate(config, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path), 3, 0, False, read_only=True)
  try:
    steps = list(ckpt.manager.all_steps())
  finally:
    ckpt.close()
  assert steps and max(steps) < 10  # it stopped before the first log step would have seen the NaN
  import jax
  for step in steps:  # every checkpoint that exists holds a finite state
    _, state, _ = restore_latest(config, str(tmp_path), step)
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      assert np.all(np.isfinite(np.asarray(leaf))), step


class SlowEvalDigits:
  """The digits dataset whose evaluation takes 0.3 s longer per split: evaluation, not training."""

  def __init__(self, dataset):
    self._dataset, self.info = dataset, dataset.info

  def train_batch(self, *args, **kw):
    return self._dataset.train_batch(*args, **kw)

  def splits(self):
    return self._dataset.splits()

  def eval_batches(self, *args, **kw):
    time.sleep(0.3)
    yield from self._dataset.eval_batches(*args, **kw)


def test_throughput_counts_training_alone(tmp_path):
  config = _mlp(40, log_every_steps=5, eval_every_steps=5, **{'checkpoint.every_steps': 40})
  summary = train_and_evaluate(config, str(tmp_path), SlowEvalDigits(load_dataset(config)))
  # 8 evaluations sleep 2.4 s in all: the whole loop is slower than that, training alone is not.
  assert summary['loop_steps_per_second'] < 40 / 2.4
  assert summary['train_steps_per_second'] > 3 * summary['loop_steps_per_second']
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert all(r['train/steps_per_second'] > 3 * summary['loop_steps_per_second'] for r in rows[1:])


def test_rerun_of_a_finished_workdir_keeps_its_summary(tmp_path, capsys):
  config = _mlp(6, log_every_steps=3, eval_every_steps=6, **{'checkpoint.every_steps': 3})
  first = train_and_evaluate(config, str(tmp_path))
  path = tmp_path / 'summary.json'
  before = (path.read_bytes(), os.stat(path).st_mtime_ns)
  capsys.readouterr()
  again = train_and_evaluate(config, str(tmp_path))
  assert 'already trained to step 6' in capsys.readouterr().out
  assert again == first and (path.read_bytes(), os.stat(path).st_mtime_ns) == before
  # A longer run resumes and says from where.
  config.num_train_steps = 9
  summary = train_and_evaluate(config, str(tmp_path))
  assert 'resuming from the checkpoint at step 6 of 9' in capsys.readouterr().out
  assert summary['resumed_from_step'] == 6 and summary['steps'] == 9


def test_workdir_that_is_a_file_or_cannot_be_created(tmp_path):
  from maasjax import cli
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('keep me')
  cfg = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'experiments', 'digits_mlp.py')
  assert cli.main(['train', '--config', cfg, '--workdir', str(a_file)]) == 2
  assert cli.main(['train', '--config', cfg, '--workdir', str(a_file / 'run')]) == 2
  assert a_file.read_text() == 'keep me'


def test_resume_refuses_only_what_changes_shapes_or_data_order(tmp_path, capsys):
  from maasjax.config import ConfigError
  config = _mlp(4, log_every_steps=2, eval_every_steps=4, **{'checkpoint.every_steps': 2})
  train_and_evaluate(config, str(tmp_path))
  config.num_train_steps = 6
  config.model.dropout = 0.3  # no parameter changes shape: resumes
  config.optimizer.learning_rate = 5e-4
  assert train_and_evaluate(config, str(tmp_path))['resumed_from_step'] == 4
  for key, value in (('model.hidden', (128, 128)), ('seed', 1), ('batch_size', 32)):
    changed = _mlp(8, log_every_steps=2, eval_every_steps=4, **{'checkpoint.every_steps': 2, key: value})
    with pytest.raises(ConfigError, match=f'{key}: checkpoint has'):
      train_and_evaluate(changed, str(tmp_path))
