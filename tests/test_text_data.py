"""Text and sequence data: tokenizers, char LM windows, generated seq2seq / majority tasks, tfds pipelines."""
import math

import ml_collections
import numpy as np
import pytest

from conftest import experiment_config
from maasjax.config import ConfigError
from maasjax.data import load_dataset
from maasjax.data.sequences import load_digit_seq2seq, load_majority_digit
from maasjax.data.text import BUNDLED_TEXT, char_lm_dataset, load_char_text, unigram_entropy
from maasjax.tokenizers import ByteVocab, CharVocab, tokenizer_from_info


def _cfg(**kw):
  return ml_collections.ConfigDict(kw)


def test_tokenizers_round_trip():
  vocab = CharVocab('abc ')
  ids = vocab.encode('cab a')
  np.testing.assert_array_equal(ids, [3, 1, 2, 4, 1])  # 0 is padding
  assert vocab.decode(np.concatenate([[0, 0], ids])) == 'cab a'
  with pytest.raises(ConfigError, match="'xz'"):
    vocab.encode('axbz')
  special = CharVocab('0123456789', with_bos_eos=True)
  assert special.encode('09').tolist() == [3, 12] and special.vocab_size == 13
  assert special.decode([1, 3, 12, 2, 0]) == '09'
  byte = ByteVocab()
  text = 'Größe 東京'
  assert byte.decode(byte.encode(text)) == text and byte.encode('A').tolist() == [65 + 3]


def test_unigram_entropy_by_hand():
  assert unigram_entropy('aaaa') == 0.0
  assert unigram_entropy('abab') == pytest.approx(math.log(2))
  assert unigram_entropy('aabc') == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_char_lm_windows_labels_and_exact_coverage():
  text = ''.join(chr(ord('a') + (i * 7) % 26) for i in range(1000))
  ds = char_lm_dataset('t', {'train': text[:800], 'validation': text[800:900], 'test': text[900:]},
                       _cfg(seq_len=16), seed=1)
  vocab = tokenizer_from_info(ds.info)
  b = ds.train_batch(3, 8)
  assert b['inputs'].shape == b['labels'].shape == (8, 16)
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['labels'][:, :-1])  # labels are the next characters
  assert vocab.decode(b['inputs'][0]) in text[:800]
  np.testing.assert_array_equal(ds.train_batch(3, 8)['inputs'], b['inputs'])  # pure function of (seed, step)
  assert not np.array_equal(ds.train_batch(4, 8)['inputs'], b['inputs'])
  # Evaluation scores every validation character after the first exactly once, in order.
  batches = list(ds.eval_batches('validation', 4))
  scored = np.concatenate([bb['labels'][bb['mask'] > 0][bb['labels'][bb['mask'] > 0] > 0] for bb in batches])
  assert vocab.decode(scored) == text[801:900]
  assert ds.info.num_examples['validation'] == 99
  assert ds.info.extra['model_fields']['vocab_size'] == 27


def test_bundled_text_and_char_text_splits(tmp_path):
  ds = load_char_text(_cfg(path='', seq_len=64), seed=0)
  with open(BUNDLED_TEXT, encoding='utf-8') as f:
    text = f.read()
  assert len(text) > 40_000 and ds.info.extra['unigram_entropy'] == pytest.approx(
      unigram_entropy(text[:int(len(text) * 0.9)]))
  assert sum(ds.info.num_examples.values()) == len(text) - 3  # contiguous splits: every character once
  path = tmp_path / 'mine.txt'
  path.write_text('hello world, ' * 50)
  assert load_char_text(_cfg(path=str(path), seq_len=8), seed=0).info.num_classes == 10  # 9 characters + pad
  with pytest.raises(ConfigError, match='does not exist'):
    load_char_text(_cfg(path=str(tmp_path / 'missing.txt')), seed=0)


@pytest.mark.parametrize('task', ['reverse', 'sort', 'add'])
def test_digit_seq2seq_targets_and_held_out_inputs(task):
  ds = load_digit_seq2seq(_cfg(task=task, min_len=1, max_len=5, num_train=2000, num_validation=100, num_test=100),
                          seed=0)
  vocab = tokenizer_from_info(ds.info)
  arrays = {s: ds.split_arrays(s) for s in ('train', 'validation', 'test')}
  inputs = {s: {vocab.decode(r) for r in a['inputs']} for s, a in arrays.items()}
  assert len(inputs['train']) == 2000 and not (inputs['train'] & (inputs['validation'] | inputs['test']))
  for x_row, y_row in zip(arrays['test']['inputs'][:50], arrays['test']['labels'][:50]):
    x, y = vocab.decode(x_row), vocab.decode(y_row)
    expected = {'reverse': x[::-1], 'sort': ''.join(sorted(x)), 'add': str(sum(int(v) for v in x.split('+')))}[task]
    assert y == expected
    assert y_row[len(y)] == vocab.eos_id and (y_row[len(y) + 1:] == 0).all()  # EOS, then padding


def test_majority_digit_labels():
  ds = load_majority_digit(_cfg(num_train=200, num_validation=50, num_test=50), seed=0)
  a = ds.split_arrays('test')
  for row, label in zip(a['inputs'], a['labels']):
    counts = np.bincount(row[row > 0] - 1, minlength=10)
    assert np.argmax(counts) == label and (counts == counts.max()).sum() == 1
  assert ds.info.task == 'sequence_classification' and a['inputs'].shape[1] == 24


def test_too_small_a_space_is_a_clear_error():
  with pytest.raises(ConfigError, match='distinct examples'):
    load_digit_seq2seq(_cfg(task='reverse', min_len=1, max_len=2, num_train=500), seed=0)


def test_tiny_shakespeare_pipeline_under_mock_data():
  import tensorflow_datasets as tfds
  config = experiment_config('tiny_shakespeare_lm')
  config.dataset.seq_len = 8
  with tfds.testing.mock_data(num_examples=6):
    ds = load_dataset(config)
    batch = ds.train_batch(0, 4)
  assert batch['inputs'].shape == (4, 8) and ds.info.task == 'language_modelling'
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['labels'][:, :-1])
  assert set(ds.splits()) == {'train', 'validation', 'test'}


def test_lm1b_pipeline_under_mock_data():
  import tensorflow_datasets as tfds
  config = experiment_config('lm1b_lm')
  config.dataset.update(seq_len=12, shuffle_buffer=16, eval_examples=3)
  with tfds.testing.mock_data(num_examples=10):
    ds = load_dataset(config)
    first = [ds.train_batch(s, 4) for s in range(3)]
    fresh = load_dataset(config)  # a resumed run's reader
    reads = []
    source = fresh._source
    fresh._source = type('Counted', (), {'__len__': lambda _: len(source),
                                         '__getitem__': lambda _, i: reads.append(i) or source[i]})()
    resumed = fresh.train_batch(2, 4)
    far = fresh.train_batch(10_000, 4)  # 4,000 epochs in: still one batch read
    evals = list(ds.eval_batches('validation', 2))
    test_rows = sum(int(b['mask'].sum()) for b in ds.eval_batches('test', 4))
  np.testing.assert_array_equal(resumed['inputs'], first[2]['inputs'])
  assert len(reads) == 8 and far['inputs'].shape == (4, 12)  # the resume read its batch only, not steps 0..s
  # Steps 0..2 cover epochs 0 and 1 (positions 0..11 of 10 sentences): one permutation per epoch, not per step.
  assert ds._permutations.computed == 2
  b = first[0]
  assert b['inputs'].shape == (4, 12) and (b['inputs'][:, 0] == ByteVocab.bos_id).all()
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['labels'][:, :-1])
  rows = [r[r > 0] for r in np.concatenate([b['inputs'][:, :1], b['labels']], axis=1)]
  assert all(r[-1] == ByteVocab.eos_id or len(r) == 13 for r in rows)  # whole sentence + EOS, or cut at seq_len
  assert sum(int(e['mask'].sum()) for e in evals) == 3 and test_rows == 10
  with tfds.testing.mock_data(num_examples=10):  # download=True prepares ArrayRecord (a no-op under the mock)
    config.dataset.download = True
    np.testing.assert_array_equal(load_dataset(config).train_batch(2, 4)['inputs'], first[2]['inputs'])


def _tfrecord_sentences(data_dir, n=40, shards=3):
  """A real prepared copy in tfds's default TFRecord format (no random access), several shards, offline."""
  import tensorflow_datasets as tfds

  class Sentences(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(n), 'test': self._generate_examples(5)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {'text': f'sentence {i}'}

  builder = Sentences(data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=shards))
  return builder


def test_tfrecord_lm1b_resume_seeks_by_shard_and_offset(tmp_path):
  from maasjax.data.text import SentenceStreamDataset
  builder = _tfrecord_sentences(tmp_path)
  assert len(builder.info.splits['train'].shard_lengths) == 3

  def dataset():
    info = load_dataset(experiment_config('char_lm')).info  # any LM info: only the train stream is used here
    return SentenceStreamDataset(info, builder, seq_len=16, seed=0, shuffle_buffer=8, eval_examples=3)

  run = dataset()
  assert run._source is None  # TFRecord: no random access, the sharded stream reads it
  batches = [run.train_batch(s, 4) for s in range(25)]  # 100 positions: 2.5 epochs of 40 sentences
  first_epoch = {ByteVocab().decode(r)
                 for b in batches[:10] for r in np.concatenate([b['inputs'][:, :1], b['labels']], axis=1)}
  assert first_epoch == {f'sentence {i}' for i in range(40)}  # each sentence once per epoch
  assert run._stream.records_read == 104  # each sentence read once, in whole blocks of 8: no seek, no re-read
  fresh = dataset()  # a run resumed at step 23 (epoch 2, offset 12, inside block 1)
  np.testing.assert_array_equal(fresh.train_batch(23, 4)['inputs'], batches[23]['inputs'])
  assert fresh._stream.records_read == 8  # one block, not the 92 sentences before it
  np.testing.assert_array_equal(fresh.train_batch(24, 4)['inputs'], batches[24]['inputs'])
  assert not np.array_equal(batches[0]['inputs'], batches[10]['inputs'])  # epochs differ in order
