"""config.init_from: a run starts from another workdir's parameters (matching paths and shapes; a new head
for a different number of classes), across meshes, with frozen layers; bad sources exit 2 writing nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from maasjax import cli
from maasjax.config import load_config_file, load_workdir_config
from maasjax.train.loop import restore_latest, train_and_evaluate

CONFIG = os.path.join(ROOT, 'experiments', 'digits_cnn_transfer.py')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """The CNN trained a few steps on digits 0-5 (6 classes), on one device."""
  workdir = str(tmp_path_factory.mktemp('transfer') / 'pre')
  config = load_config_file(f'{CONFIG}:0to5')
  config.num_train_steps, config.checkpoint.every_steps, config.progress_bar = 12, 12, False
  train_and_evaluate(config, workdir)
  return workdir


def _params(workdir: str) -> dict:
  config = load_workdir_config(workdir)
  config.mesh.data, config.mesh.fsdp = -1, 1  # read back on this process's one device
  return restore_latest(config, workdir)[1].params


def test_fine_tune_on_eight_devices_loads_the_body_new_head_frozen_convs(pretrained, tmp_path):
  out = str(tmp_path / 'ft')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'maasjax.cli', 'train', '--config', f'{CONFIG}:6to9', '--workdir', out,
       f'--config.init_from.workdir={pretrained}', "--config.init_from.freeze=('Conv_',)",
       '--config.num_train_steps=4', '--config.checkpoint.every_steps=4', '--config.eval_every_steps=4',
       '--config.mesh.data=1', '--config.mesh.fsdp=8', '--config.sharding.preset=fsdp', '--config.progress_bar=false'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'loaded 6 arrays' in proc.stdout and 'freshly initialised: params/Dense_1/kernel (shape [256, 4] here, ' \
      '[256, 6] in the source)' in proc.stdout, proc.stdout
  source, tuned = _params(pretrained), _params(out)
  assert tuned['Dense_1']['kernel'].shape == (256, 4)
  for layer in ('Conv_0', 'Conv_1'):  # loaded, then frozen: exactly the source's after 4 steps on 8 devices
    for leaf in ('kernel', 'bias'):
      np.testing.assert_array_equal(np.asarray(tuned[layer][leaf]), np.asarray(source[layer][leaf]))
  moved = np.asarray(tuned['Dense_0']['kernel']) - np.asarray(source['Dense_0']['kernel'])
  assert 0 < np.abs(moved).max() < 0.05  # loaded (close to the source), then trained (not equal)


def test_bad_sources_exit_2_and_write_nothing(pretrained, tmp_path, capsys):
  base = ['train', '--config', f'{CONFIG}:6to9', '--config.num_train_steps=2']
  cases = [([f'--config.init_from.workdir={tmp_path / "nowhere"}'], 'has no checkpoints/ folder'),
           ([f'--config.init_from.workdir={pretrained}', '--config.init_from.step=7'],
            'has checkpoints at steps '),
           ([f'--config.init_from.workdir={pretrained}', "--config.init_from.skip=('.',)"],
            'matches the checkpoint'),
           ([f'--config.init_from.workdir={pretrained}', "--config.init_from.freeze=('Conv_9',)"],
            "'Conv_9' matches no parameter"),
           ([f'--config.init_from.workdir={pretrained}', "--config.init_from.skip=('(',)"],
            'is not a regular expression'),
           (['--config.dataset.classes=(6, 6)'], 'expected at least two distinct labels in 0..9')]
  for i, (extra, fragment) in enumerate(cases):
    out = tmp_path / f'bad{i}'
    assert cli.main(base + ['--workdir', str(out)] + extra) == 2, extra
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
  assert cli.main(['train', '--config', f'{CONFIG}:5to9', '--workdir', str(tmp_path / 'bad_arg')]) == 2
  assert "expected one of 0to5, 6to9" in capsys.readouterr().err and not (tmp_path / 'bad_arg').exists()
