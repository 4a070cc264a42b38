"""Language-modelling data: a character LM over any local text file, tfds tiny_shakespeare (characters)
and tfds lm1b (UTF-8 bytes). A batch is {'inputs': tokens [B, L], 'labels': next tokens [B, L]};
label 0 (padding) is not scored."""
from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Iterator

import ml_collections
import numpy as np

from maasjax.config import ConfigError
from maasjax.data.base import (Batch, Dataset, DatasetInfo, EpochPermutations, host_slice, padded_batches,
                               stream_indices)
from maasjax.data.tfds_source import prepared_builder
from maasjax.data.tokenizers import ByteVocab, CharVocab

# An original text written for this repository (Apache-2.0, like the code): the default char LM corpus.
BUNDLED_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'texts', 'keepers_log.txt')


def unigram_entropy(text: str) -> float:
  """Entropy of the character distribution, in nats per character: the loss of a model with no context."""
  counts = np.array(list(Counter(text).values()), np.float64)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def _pad_rows(rows: list[np.ndarray], width: int) -> np.ndarray:
  out = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r[:width]
  return out


def padded_eval_batches(rows: list[np.ndarray], width: int, batch_size: int, process_index: int,
                        process_count: int) -> Iterator[Batch]:
  """Token rows (each inputs + 1 next token) -> padded batches of inputs/labels; `mask` marks real rows."""
  tokens = _pad_rows(rows, width + 1)
  return padded_batches({'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}, batch_size, process_index,
                        process_count)


class CharStreamDataset(Dataset):
  """Each split is one stream of token ids; examples are windows of `seq_len` (+1 for the labels).

  Training windows start at offsets drawn from (seed, step); evaluation windows are consecutive, so
  a split is scored exactly once.
  """

  def __init__(self, info: DatasetInfo, streams: dict[str, np.ndarray], seq_len: int, seed: int):
    for split, stream in streams.items():
      if len(stream) < 2:
        raise ConfigError(f'dataset {info.name!r}: split {split!r} has {len(stream)} characters; need at least 2')
    self.info, self._streams, self._seq_len, self._seed = info, streams, seq_len, seed

  def splits(self) -> list[str]:
    return list(self._streams)

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    stream, width = self._streams['train'], self._seq_len + 1
    rng = np.random.default_rng([self._seed, step])
    starts = rng.integers(0, max(1, len(stream) - width + 1), size=batch_size)[host_slice(batch_size, process_index,
                                                                                         process_count)]
    tokens = _pad_rows([stream[s:s + width] for s in starts], width)
    return {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}

  def eval_batches(self, split, batch_size, process_index=0, process_count=1):
    stream, n = self._streams[split], self._seq_len
    # Consecutive windows overlap by one token (the next window's first input is this one's last label),
    # so every character after the first is predicted exactly once.
    rows = [stream[s:s + n + 1] for s in range(0, len(stream) - 1, n)]
    return padded_eval_batches(rows, n, batch_size, process_index, process_count)


def char_lm_info(name: str, vocab: CharVocab, seq_len: int, streams: dict[str, np.ndarray], train_text: str):
  return DatasetInfo(
      name=name, task='language_modelling', input_shape=(seq_len,), input_dtype='int32',
      num_classes=vocab.vocab_size, label_names=[],
      num_examples={k: int(len(v) - 1) for k, v in streams.items()},  # scored characters
      extra={'tokenizer': vocab.to_dict(), 'model_fields': {'vocab_size': vocab.vocab_size},
             'unigram_entropy': unigram_entropy(train_text)})


def char_lm_dataset(name: str, texts: dict[str, str], cfg: ml_collections.ConfigDict, seed: int) -> CharStreamDataset:
  seq_len = int(cfg.get('seq_len', 128))
  if seq_len < 1:
    raise ConfigError(f'config.dataset.seq_len={seq_len}: expected an integer >= 1')
  # Characters of every split: an unseen character in validation text is still a token, not an error.
  vocab = CharVocab(''.join(sorted(set(''.join(texts.values())))))
  streams = {k: vocab.encode(v) for k, v in texts.items()}
  return CharStreamDataset(char_lm_info(name, vocab, seq_len, streams, texts['train']), streams, seq_len, seed)


def load_char_text(cfg: ml_collections.ConfigDict, seed: int) -> CharStreamDataset:
  """Any local UTF-8 text file (`config.dataset.path`): the last fractions are validation and test."""
  path = cfg.get('path') or BUNDLED_TEXT
  if not os.path.isfile(path):
    raise ConfigError(f'config.dataset.path={path!r} does not exist; expected a UTF-8 text file')
  with open(path, encoding='utf-8') as f:
    text = f.read()
  val, test = float(cfg.get('validation_fraction', 0.05)), float(cfg.get('test_fraction', 0.05))
  if not (0 < val and 0 < test and val + test < 1):
    raise ConfigError(f'config.dataset: validation_fraction={val}, test_fraction={test}; expected positive '
                      'fractions that sum to less than 1')
  # Contiguous splits (not random windows): held-out text is text the model never saw, not shuffled neighbours.
  a, b = int(len(text) * (1 - val - test)), int(len(text) * (1 - test))
  return char_lm_dataset('char_text', {'train': text[:a], 'validation': text[a:b], 'test': text[b:]}, cfg, seed)


def load_tiny_shakespeare(cfg: ml_collections.ConfigDict, seed: int) -> CharStreamDataset:
  """tfds tiny_shakespeare: each split is one long text (about 1 MB in all), modelled by character."""
  import tensorflow_datasets as tfds
  builder = prepared_builder('tiny_shakespeare', cfg, 'text')
  texts = {}
  for split in ('train', 'validation', 'test'):
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    texts[split] = ''.join(ex['text'].decode('utf-8') for ex in examples)
  return char_lm_dataset('tiny_shakespeare', texts, cfg, seed)


class SentenceStreamDataset(Dataset):
  """tfds sentences (lm1b), [BOS] bytes [EOS], cut or padded to seq_len + 1 tokens.

  Training batch `s` holds the sentences at positions s*B .. s*B+B-1 of an endless stream whose epoch e is
  the seeded permutation `default_rng([seed, e])` of the training split (as for in-memory data), read by
  index from tfds's random-access data source (ArrayRecord files): a run resumed at step s reads just its
  batch, O(1) in s. A copy prepared as TFRecord (tfds's default file format) has no random access; then
  the stream is tf.data's seeded shuffle and a resume replays it up to step s (said once on stderr):
  prepare lm1b with `--file_format=array_record` for the O(1) resume.
  """

  def __init__(self, info: DatasetInfo, builder, seq_len: int, seed: int, shuffle_buffer: int, eval_examples: int):
    self.info, self._builder, self._seq_len, self._seed = info, builder, seq_len, seed
    self._shuffle_buffer, self._eval_examples = shuffle_buffer, eval_examples
    self._vocab = ByteVocab()
    self._iter, self._next_step, self._batch_size = None, 0, None
    try:  # random access exists only for ArrayRecord files
      self._source = builder.as_data_source(split='train')
    except Exception:  # noqa: BLE001 - tfds raises assorted types for a format without random access
      self._source = None
    # One permutation per epoch, not per step: for lm1b's 30M sentences a permutation takes seconds.
    self._permutations = EpochPermutations(seed, len(self._source)) if self._source is not None else None

  def splits(self) -> list[str]:
    return ['train', 'validation', 'test']

  def _row(self, text) -> np.ndarray:
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, np.uint8).astype(np.int32) + self._vocab.offset
    return np.concatenate([[self._vocab.bos_id], ids, [self._vocab.eos_id]]).astype(np.int32)[:self._seq_len + 1]

  def _train_iterator(self, batch_size: int):
    import tensorflow as tf
    import tensorflow_datasets as tfds
    read = tfds.ReadConfig(shuffle_seed=self._seed)
    ds = self._builder.as_dataset(split='train', shuffle_files=True, read_config=read).repeat()
    ds = ds.shuffle(self._shuffle_buffer, seed=self._seed).batch(batch_size)
    options = tf.data.Options()
    options.deterministic = True
    return iter(tfds.as_numpy(ds.with_options(options)))

  def _streamed_texts(self, step: int, batch_size: int):
    """The TFRecord fallback: tf.data's seeded stream, replayed up to `step` on a fresh reader."""
    if self._iter is None or step != self._next_step or batch_size != self._batch_size:
      self._iter, self._next_step, self._batch_size = self._train_iterator(batch_size), 0, batch_size
      if step:
        print(f'{self.info.name}: this copy has no random access (TFRecord files); replaying {step} batches to '
              f'resume. Prepare it with --file_format=array_record for an O(1) resume.', file=sys.stderr, flush=True)
      for _ in range(step):
        next(self._iter)
      self._next_step = step
    self._next_step += 1
    return next(self._iter)['text']

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    local = host_slice(batch_size, process_index, process_count)
    if self._source is not None:
      indices = stream_indices(self._seed, step, batch_size, len(self._source), self._permutations)[local]
      texts = [self._source[int(i)]['text'] for i in indices]
    else:
      texts = self._streamed_texts(step, batch_size)[local]
    tokens = _pad_rows([self._row(t) for t in texts], self._seq_len + 1)
    return {'inputs': tokens[:, :-1], 'labels': tokens[:, 1:]}

  def eval_batches(self, split, batch_size, process_index=0, process_count=1):
    import tensorflow_datasets as tfds
    # lm1b has no validation split: periodic evaluation reads the first `eval_examples` test sentences.
    ds = self._builder.as_dataset(split='test', shuffle_files=False)
    if split == 'validation':
      ds = ds.take(self._eval_examples)
    rows = [self._row(ex['text']) for ex in tfds.as_numpy(ds)]
    return padded_eval_batches(rows, self._seq_len, batch_size, process_index, process_count)


def load_lm1b(cfg: ml_collections.ConfigDict, seed: int) -> SentenceStreamDataset:
  """tfds lm1b (One Billion Word benchmark), byte-level: no tokenizer to train, vocabulary 259."""
  # ArrayRecord files give random access (an O(1) resume, see SentenceStreamDataset): a download writes them.
  builder = prepared_builder('lm1b', cfg, 'text', prepare_format='array_record',
                             extra_flags=' --file_format=array_record')
  seq_len = int(cfg.get('seq_len', 128))
  vocab = ByteVocab()
  info = DatasetInfo(name='lm1b', task='language_modelling', input_shape=(seq_len,), input_dtype='int32',
                     num_classes=vocab.vocab_size, label_names=[], num_examples={},
                     extra={'tokenizer': vocab.to_dict(), 'model_fields': {'vocab_size': vocab.vocab_size}})
  return SentenceStreamDataset(info, builder, seq_len, seed, int(cfg.get('shuffle_buffer', 10_000)),
                               int(cfg.get('eval_examples', 2048)))
