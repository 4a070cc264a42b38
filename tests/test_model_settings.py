"""Every model family's settings are checked where the config is read: one line naming the key, exit 2."""
import os

import pytest

from conftest import ROOT
from maasjax import cli


def _cfg(name):
  return os.path.join(ROOT, 'experiments', f'{name}.py')


@pytest.mark.parametrize('experiment,override,message', [
    ('digits_transformer', 'model.num_heads=3', 'config.model.num_heads=3: must divide config.model.emb_dim=64'),
    ('digits_transformer', 'model.positions=absolute', "config.model.positions='absolute': model"),
    ('digits_transformer', 'model.dropout=1.5', "config.model.dropout=1.5: model 'transformer_classifier' expects a rate"),
    ('char_lm', 'model.attention_window=-2', 'config.model.attention_window=-2'),
    ('char_lm', 'model.emb_dim=0', 'config.model.emb_dim=0'),
    ('graph_families_gcn', 'model.readout=avg', "config.model.readout='avg': model 'gcn' expects one of none, mean"),
    ('digits_knn_gat', 'model.hidden=(8,-1)', "config.model.hidden=(8, -1): model 'gat' expects a non-empty tuple"),
    ('digits_knn_gat', 'model.num_heads=3', 'config.model.hidden=(64,): with config.model.num_heads=3, every hidden'),
    ('digits_knn_gat', 'model.num_heads=0', "config.model.num_heads=0: model 'gat' expects a positive integer"),
    ('digits_lstm', 'model.hidden=(128,0)', "config.model.hidden=(128, 0): model 'lstm' expects a non-empty tuple"),
    ('digits_cnn', 'model.features=()', "config.model.features=(): model 'cnn' expects a non-empty tuple"),
    ('digits_cnn', 'model.dropout=-0.1', 'config.model.dropout=-0.1'),
    ('digits_mlp', 'model.hidden=(0,)', 'config.model.hidden=(0,)'),
    ('digits_resnet', 'model.width=0', "config.model.width=0: model 'resnet' expects a positive integer"),
])
def test_bad_model_setting_is_one_message_before_tracing(experiment, override, message, tmp_path, capsys):
  workdir = tmp_path / 'w'
  assert cli.main(['train', '--config', _cfg(experiment), '--workdir', str(workdir), f'--config.{override}']) == 2
  err = capsys.readouterr().err
  assert err.startswith('maasjax: error: ') and message in err, err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1
  assert not workdir.exists()  # refused before anything was written


def test_settings_not_in_an_experiment_file_are_checked_too(config_factory):
  from maasjax.config import ConfigError
  from maasjax.models import build_model
  config = config_factory('digits_lstm')
  with config.model.unlocked():
    config.model.cell = 'rnn'
  with pytest.raises(ConfigError, match="config.model.cell='rnn': model 'lstm' expects one of lstm, gru"):
    build_model(config, num_classes=10)
