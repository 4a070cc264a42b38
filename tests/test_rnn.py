"""LSTM / GRU classifiers: shapes, padding, and the digits LSTM config reaching its accuracy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import experiment_config
from maasjax.models.rnn import GRUClassifier, LSTMClassifier
from maasjax.train.loop import train_and_evaluate

KEY = jax.random.key(0)


def test_stacked_lstm_over_rows():
  rows = jnp.ones((3, 8, 8, 1))  # an 8x8 digit is 8 steps of 8 features
  model = LSTMClassifier(num_classes=10, hidden=(16, 12))
  params = jax.jit(model.init)(KEY, rows)['params']
  assert jax.jit(model.apply)({'params': params}, rows).shape == (3, 10)
  assert set(params) == {'lstm_0', 'lstm_1', 'head'} and params['head']['kernel'].shape == (12, 10)


@pytest.mark.parametrize('cls,bidirectional', [(LSTMClassifier, False), (GRUClassifier, True)])
def test_token_padding_and_final_state(cls, bidirectional):
  """Trailing padding (id 0) changes nothing: each row's sequence ends at its last real token."""
  model = cls(num_classes=4, hidden=(16,), bidirectional=bidirectional, vocab_size=10)
  tokens = jnp.array([[5, 6, 7, 0, 0], [3, 4, 5, 6, 7]])
  params = jax.jit(model.init)(KEY, tokens)['params']
  apply = jax.jit(lambda x: model.apply({'params': params}, x))
  out = apply(tokens)
  assert out.shape == (2, 4) and (f'{model.cell}_0_forward' in params) == bidirectional
  np.testing.assert_allclose(apply(tokens[:, :3])[0], out[0], atol=1e-6)
  assert np.abs(apply(tokens.at[0, 2].set(9))[0] - out[0]).max() > 1e-4  # the last real token matters


def test_digits_lstm_config_learns(tmp_path):
  config = experiment_config('digits_lstm', num_train_steps=600, eval_every_steps=600, log_every_steps=100)
  config.optimizer.warmup_steps = 50
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary['test/accuracy'] >= 0.95
