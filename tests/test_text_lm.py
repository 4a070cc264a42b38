"""Sequence configs train through the loop; `maasjax generate` prints text; seq2seq exact match = greedy decoding."""
import jax
import numpy as np
import pytest

from conftest import experiment_config
from maasjax import cli
from maasjax.models import decoding
from maasjax.train.loop import restore_latest, train_and_evaluate

TINY_TRANSFORMER = {'num_layers': 1, 'emb_dim': 32, 'mlp_dim': 64, 'num_heads': 2}


def _tiny(name, steps=4, **dataset):
  config = experiment_config(name, num_train_steps=steps, log_every_steps=steps, eval_every_steps=steps)
  config.optimizer.warmup_steps = 0
  config.model.update({k: v for k, v in TINY_TRANSFORMER.items() if k in config.model})
  config.dataset.update(dataset)
  return config


@pytest.mark.parametrize('name,dataset', [
    ('digits_transformer', {}),
    ('majority_transformer', {'num_train': 64, 'num_validation': 16, 'num_test': 16}),
    ('tiny_shakespeare_lm', {'seq_len': 8}),
    ('lm1b_lm', {'seq_len': 12, 'shuffle_buffer': 8, 'eval_examples': 4}),
])
def test_configs_train_a_few_steps(tmp_path, name, dataset):
  import tensorflow_datasets as tfds
  config = _tiny(name, **dataset)
  config.batch_size = config.eval_batch_size = 8
  # tfds's mock swaps in a fake file system while it opens a dataset; lm1b streams (opens during training),
  # and an async checkpoint thread writing at that moment would write into the fake one.
  config.checkpoint.async_save = False
  with tfds.testing.mock_data(num_examples=12):  # only the tfds configs read it
    summary = train_and_evaluate(config, str(tmp_path))
  assert summary['steps'] == 4 and np.isfinite(summary['test/loss'])
  if name.endswith('_lm'):  # language models report perplexity = exp(loss per token)
    assert summary['test/perplexity'] == pytest.approx(np.exp(summary['test/loss']), rel=1e-6)
  else:
    assert 'test/perplexity' not in summary


def test_char_lm_trains_and_generate_prints_text(tmp_path, capsys):
  config = _tiny('char_lm', steps=60, seq_len=32)
  config.model.max_len, config.model.attention_window = 128, 32
  config.optimizer.learning_rate = 3e-3
  summary = train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'dataset_info.json') as f:
    import json
    entropy = json.load(f)['extra']['unigram_entropy']
  assert summary['eval/loss'] < entropy  # already below a no-context model after 60 tiny steps
  capsys.readouterr()
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', 'The light', '--max-new-tokens', '40',
                   '--temperature', '0.8', '--seed', '1']) == 0
  out = capsys.readouterr().out.rstrip('\n')
  assert out.startswith('The light') and len(out) == len('The light') + 40
  # Unknown characters and over-long requests are one clear error (exit 2), not a traceback.
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', '\u2603', '--max_new_tokens', '4']) == 2
  assert '--max_new_tokens is deprecated; use --max-new-tokens' in capsys.readouterr().err
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', 'a', '--max-new-tokens', '500']) == 2
  assert 'max_len=128' in capsys.readouterr().err


@pytest.mark.slow
def test_seq2seq_exact_match_is_greedy_decoding_and_generate(tmp_path, capsys):
  config = _tiny('seq2seq_transformer', steps=150, min_len=1, max_len=4, num_train=2000, num_validation=100, num_test=200)
  config.batch_size, config.eval_batch_size = 64, 200
  config.optimizer.learning_rate = 3e-3
  summary = train_and_evaluate(config, str(tmp_path))
  exp, state, _ = restore_latest(config, str(tmp_path))
  test = exp.dataset.split_arrays('test')
  out = jax.jit(lambda p, x: decoding.seq2seq_generate(exp.model, p, x, test['labels'].shape[1], jax.random.key(0),
                                                       bos_id=1, eos_id=2))(state.params, test['inputs'])
  greedy_exact = np.mean([np.array_equal(o, y) for o, y in zip(np.asarray(out), test['labels'])])
  assert greedy_exact == pytest.approx(summary['test/exact_match'])
  assert 0.3 < greedy_exact < 1.0  # part-trained: some outputs right, some wrong, and both measures agree
  capsys.readouterr()
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', '1234', '--prompt', '907',
                   '--temperature', '0', '--max-new-tokens', '5']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [line.split(' -> ')[0] for line in lines] == ['1234', '907']
  assert all(0 < len(line.split(' -> ')[1]) <= 5 for line in lines)
  # Without --max-new-tokens a seq2seq model writes up to its target length; past its decoder: one message.
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', '1234', '--temperature', '0']) == 0
  assert cli.main(['generate', '--workdir', str(tmp_path), '--prompt', '123', '--max-new-tokens', '200']) == 2
  err = capsys.readouterr().err
  assert '--max-new-tokens 200: this seq2seq model writes at most' in err and 'Traceback' not in err
