"""The whole train -> evaluate path: outputs in the workdir, accuracy bars, tfds under mock data."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import experiment_config, run_cli
from maasjax.config import ConfigError
from maasjax.train.loop import evaluate, restore_latest, train_and_evaluate


@pytest.fixture(scope='module')
def mlp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('mlp'))
  config = experiment_config('digits_mlp', num_train_steps=300, eval_every_steps=100, log_every_steps=50,
                             **{'checkpoint.every_steps': 100})
  return config, workdir, train_and_evaluate(config, workdir)


def test_digits_mlp_learns_and_writes_everything(mlp_run):
  config, workdir, summary = mlp_run
  assert summary['test/accuracy'] > 0.93
  assert summary['eval/accuracy'] > 0.9
  assert summary['num_params'] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
  with open(os.path.join(workdir, 'summary.json')) as f:
    on_disk = json.load(f)
  for key in ('test/accuracy', 'test/loss', 'eval/accuracy', 'eval/loss', 'num_params', 'wall_time_s',
              'train_steps_per_second'):
    assert on_disk[key] == pytest.approx(summary[key])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows] == list(range(50, 301, 50))
  assert rows[-1]['train/loss'] < rows[0]['train/loss']
  assert sum('eval/accuracy' in r for r in rows) == 3
  assert os.path.getsize(os.path.join(workdir, 'learning_curves.png')) > 10_000
  # TensorBoard reads the same scalars as metrics.jsonl, and the run's hyperparameters.
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  board = EventAccumulator(os.path.join(workdir, 'tensorboard'))
  board.Reload()
  assert [(e.step, e.value) for e in board.Scalars('train/loss')] == [
      (r['step'], pytest.approx(r['train/loss'])) for r in rows]
  assert [e.step for e in board.Scalars('eval/accuracy')] == [r['step'] for r in rows if 'eval/accuracy' in r]
  assert '_hparams_/session_start_info' in board.Tags()['tensors'] + list(board.summary_metadata)
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps == [100, 200, 300]


def test_eval_reproduces_the_final_test_metrics(mlp_run):
  config, workdir, summary = mlp_run
  metrics = evaluate(config, workdir, 'test')
  assert metrics['step'] == 300
  assert metrics['test/accuracy'] == pytest.approx(summary['test/accuracy'])
  assert metrics['test/loss'] == pytest.approx(summary['test/loss'], rel=1e-6)
  with pytest.raises(ConfigError, match="split 'holdout' is not in dataset 'digits'"):
    evaluate(config, workdir, 'holdout')


def test_rerun_of_a_finished_workdir_trains_nothing(mlp_run):
  config, workdir, summary = mlp_run
  again = train_and_evaluate(config, workdir)
  assert again == summary  # summary.json kept as it was (tests/test_loop.py checks the file itself)


def test_incompatible_workdir_is_refused(mlp_run, tmp_path):
  _, workdir, _ = mlp_run
  other = experiment_config('digits_mlp', num_train_steps=100, **{'model.hidden': (32,)})
  with pytest.raises(ConfigError, match="incompatible config:\n  model.hidden: checkpoint has \\[256, 256\\]"):
    train_and_evaluate(other, workdir)
  # Without config.json (e.g. copied checkpoints) the restore itself refuses, naming the step.
  os.remove(os.path.join(workdir, 'config.json'))
  try:
    with pytest.raises(ConfigError, match='does not fit this config'):
      restore_latest(other, workdir)
  finally:
    from maasjax.train.loop import save_run_files, setup
    save_run_files(workdir, setup(mlp_run[0]))


def test_resnet_with_batchnorm_trains_on_digits(tmp_path):
  import ml_collections
  config = experiment_config('digits_cnn', num_train_steps=120, eval_every_steps=60,
                             **{'checkpoint.every_steps': 60, 'optimizer.learning_rate': 1e-2})
  config.model = ml_collections.ConfigDict({'name': 'resnet', 'stage_sizes': (1, 1), 'width': 16})
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary['test/accuracy'] > 0.85
  exp, state, _ = restore_latest(config, str(tmp_path))
  stats = state.model_state['batch_stats']['stem_norm']
  assert np.abs(np.asarray(stats['mean'])).max() > 1e-3  # running statistics were carried and saved


def test_mnist_cnn_end_to_end_under_mock_data(tmp_path):
  config = experiment_config('mnist_cnn', num_train_steps=4, batch_size=16, eval_batch_size=16,
                             log_every_steps=2, eval_every_steps=2, **{'checkpoint.every_steps': 2})
  with tfds.testing.mock_data(num_examples=40):
    summary = train_and_evaluate(config, str(tmp_path))
  assert 0.0 <= summary['test/accuracy'] <= 1.0 and np.isfinite(summary['test/loss'])
  info = json.load(open(tmp_path / 'dataset_info.json'))
  assert info['input_shape'] == [28, 28, 1] and info['input_dtype'] == 'uint8' and info['num_classes'] == 10
  assert info['label_names'][:2] == ['0', '1']


def test_missing_tfds_dataset_says_how_to_prepare_it(tmp_path):
  result = run_cli('train', '--config', 'experiments/mnist_cnn.py', '--workdir', str(tmp_path / 'w'),
                   f'--config.dataset.data_dir={tmp_path}/no_data', timeout=300)
  assert result.returncode == 2
  assert "dataset 'mnist' is not prepared in data_dir" in result.stderr
  assert 'download_and_prepare --datasets=mnist' in result.stderr
  assert 'Traceback' not in result.stderr
  # No download was tried (download is false), and the suggestion is the embedded config of the same task.
  assert 'could not be downloaded' not in result.stderr and 'nothing was downloaded' in result.stderr
  assert '--config experiments/digits_cnn.py' in result.stderr


@pytest.mark.parametrize('experiment,suggested', [('tiny_shakespeare_lm', 'experiments/char_lm.py'),
                                                  ('lm1b_lm', 'experiments/char_lm.py'),
                                                  ('ogbg_molpcba_gcn', 'experiments/graph_families_gcn.py')])
def test_missing_tfds_dataset_suggests_the_embedded_config_of_its_task(experiment, suggested, tmp_path):
  from maasjax.data import load_dataset
  config = experiment_config(experiment, **{'dataset.data_dir': str(tmp_path / 'no_data')})
  with pytest.raises(ConfigError, match='is not prepared in data_dir') as e:
    load_dataset(config)
  assert f'--config {suggested}' in str(e.value) and 'could not be downloaded' not in str(e.value)
