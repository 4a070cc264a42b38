"""`maasjax` CLI: bad input gets one clear message and exit code 2, never a traceback."""
import json
import os

import pytest

from conftest import ROOT, run_cli
from maasjax import cli

CFG = os.path.join(ROOT, 'experiments', 'digits_mlp.py')


@pytest.mark.parametrize('argv,message', [
    (['train', '--config', CFG, '--workdir', '{w}', '--config.optimizer.lr=0.1'],
     "unknown key 'lr' in config.optimizer"),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.batch_size=big'],
     "--config.batch_size='big': expected an integer"),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.model.name=xyzzy'],
     "unknown model 'xyzzy'; known models: "),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.dataset.name=imagenet'],
     "unknown dataset 'imagenet'; known datasets: "),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.optimizer.name=adamm'],
     "unknown optimizer 'adamm' (did you mean 'adam'?); known optimizers: adagrad, adam, adamw, momentum"),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.batch_size=-4'],
     'config.batch_size=-4: expected a positive integer'),
    (['train', '--config', CFG, '--workdir', '{w}', '--config.mesh.data=3'],
     'needs 3 devices but 1 are available'),
    (['train', '--config', 'nope.py', '--workdir', '{w}'], "config file 'nope.py' does not exist"),
    (['train', '--workdir', '{w}'], 'the following arguments are required: --config'),
    (['trian'], "invalid choice: 'trian'"),
    (['eval', '--workdir', '{w}'], "workdir '{w}' does not exist"),
    (['eval', '--config', CFG, '--workdir', '{w}'], 'has no checkpoint to evaluate'),
    (['serve', '--model-base-path', '{w}', '--workers', '0'], '--workers 0: expected an integer >= 1'),
    (['serve', '--model-base-path', '{w}', '--port', '99999'], '--port 99999: expected a TCP port between 1 and 65535'),
    (['export', '--workdir', '{w}', '--model-name', 'x', '--parity-examples', '0'],
     '--parity-examples 0: expected a positive number'),
    (['export', '--workdir', '{w}', '--model-name', 'x', '--parity-examples', '-3'],
     '--parity-examples -3: expected a positive number'),
    (['generate', '--workdir', '{w}', '--prompt', 'a'], "workdir '{w}' does not exist"),
    (['serve', '--model-base-path', '{w}', '--max-batch-size', '0'], '--max-batch-size 0: expected an integer >= 1'),
    (['serve', '--model-base-path', '{w}', '--buckets', 'a,b'], "--buckets 'a,b': expected a comma list"),
    (['serve', '--model-base-path', '{w}', '--version-policy', 'newest'], "--version-policy 'newest': expected latest"),
    (['serve', '--model-base-path', '{w}', '--api-keys', '{w}.keys'], '.keys\' cannot be read: No such file'),
    (['serve', '--model-base-path', '{w}'], "is not a directory; expected a folder of NAME/VERSION/ SavedModels"),
])
def test_bad_input_exits_2_with_one_message(argv, message, tmp_path, capsys):
  argv = [a.replace('{w}', str(tmp_path / 'w')) for a in argv]
  message = message.replace('{w}', str(tmp_path / 'w'))
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('maasjax: error: ')
  assert message in err
  assert 'Traceback' not in err
  # Nothing was written for input refused up front.
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_real_process_exit_code_and_train_then_eval(tmp_path):
  bad = run_cli('train', '--config', CFG, '--workdir', str(tmp_path / 'w'), '--config.seed=x')
  assert bad.returncode == 2 and 'Traceback' not in bad.stderr
  assert "--config.seed='x': expected an integer" in bad.stderr
  ok = run_cli('train', '--config', CFG, '--workdir', str(tmp_path / 'w'), '--config.num_train_steps=60',
               '--config.log_every_steps=30', '--config.eval_every_steps=30', '--config.checkpoint.every_steps=30')
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'summary: ' in ok.stdout and 'test/accuracy=' in ok.stdout
  # eval needs the workdir alone (its config.json), and names the splits as summary.json does.
  ev = run_cli('eval', '--workdir', str(tmp_path / 'w'))
  assert ev.returncode == 0, ev.stderr[-2000:]
  metrics = json.loads(ev.stdout[ev.stdout.index('{'):])
  summary = json.load(open(tmp_path / 'w' / 'summary.json'))
  assert metrics['step'] == 60
  for key in ('eval/loss', 'eval/accuracy', 'test/loss', 'test/accuracy'):
    assert metrics[key] == pytest.approx(summary[key])
