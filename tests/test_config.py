"""Config loading and `--config.a.b=v` overrides: types, unknown keys, clear messages."""
import pytest

from maasjax.config import ConfigError, load_config, split_overrides
from conftest import ROOT

DIGITS = f'{ROOT}/experiments/digits_cnn.py'


def test_overrides_are_typed_by_the_field_they_replace():
  config = load_config(DIGITS, [('optimizer.learning_rate', '0.1'), ('batch_size', '32'),
                                ('model.features', '(8, 16)'), ('progress_bar', 'false'),
                                ('optimizer.name', 'sgd'), ('dataset.augment.random_shift', '2')])
  assert config.optimizer.learning_rate == 0.1 and isinstance(config.optimizer.learning_rate, float)
  assert config.batch_size == 32
  assert tuple(config.model.features) == (8, 16)
  assert config.progress_bar is False
  assert config.optimizer.name == 'sgd'
  assert config.dataset.augment.random_shift == 2


def test_integer_accepted_for_float_field():
  config = load_config(DIGITS, [('optimizer.learning_rate', '1')])
  assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)


@pytest.mark.parametrize('key,value,expected', [
    ('optimizer.learning_rat', '0.1', "unknown key 'learning_rat' in config.optimizer (did you mean 'learning_rate'?)"),
    ('nosuch', '1', "unknown key 'nosuch' in the config"),
    ('batch_size', 'abc', 'expected an integer'),
    ('optimizer.learning_rate', 'fast', 'expected a number'),
    ('progress_bar', 'maybe', 'expected a boolean'),
    ('optimizer', 'adam', 'is a group of settings'),
    ('batch_size.x', '1', "'batch_size' is a value, not a group"),
])
def test_bad_overrides_name_the_key_and_expectation(key, value, expected):
  with pytest.raises(ConfigError) as e:
    load_config(DIGITS, [(key, value)])
  assert expected in str(e.value)
  assert key in str(e.value)


def test_split_overrides_both_spellings():
  overrides, rest = split_overrides(['train', '--config.a.b=1', '--config.c', '2', '--workdir', 'w'])
  assert overrides == [('a.b', '1'), ('c', '2')]
  assert rest == ['train', '--workdir', 'w']
  with pytest.raises(ConfigError, match='missing value'):
    split_overrides(['--config.a'])


def test_missing_and_broken_config_files(tmp_path):
  with pytest.raises(ConfigError, match='does not exist'):
    load_config(str(tmp_path / 'nope.py'))
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n')
  with pytest.raises(ConfigError, match='failed to load: SyntaxError'):
    load_config(str(broken))
  no_fn = tmp_path / 'nofn.py'
  no_fn.write_text('x = 1\n')
  with pytest.raises(ConfigError, match='no get_config'):
    load_config(str(no_fn))


def test_config_name_without_path_resolves_in_experiments(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert load_config('digits_mlp').model.name == 'mlp'
