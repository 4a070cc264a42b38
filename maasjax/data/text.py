"""Language-modelling data: a character LM over any local text file, tfds tiny_shakespeare (characters)
and tfds lm1b (UTF-8 bytes). A batch is {'inputs': tokens [B, L], 'labels': next tokens [B, L]};
label 0 (padding) is not scored."""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator

import ml_collections
import numpy as np

from maasjax.config import ConfigError
from maasjax.data.base import (Batch, Dataset, DatasetInfo, EpochPermutations, host_slice, padded_batches,
                               stream_indices)
from maasjax.data.tfds_source import prepared_builder
from maasjax.tokenizers import ByteVocab, CharVocab

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


class ShardedStream:
  """Training sentences from TFRecord shards (no random access), addressed by stream position, seekable.

  Epoch e reads the shards in the order `default_rng([seed, e]).permutation(num_shards)`, each in file order,
  cut into blocks of `block` records, each block permuted by `default_rng([seed, e, j])`. Position p of the
  endless stream is a pure function of (seed, p). A reader that is not already there (a resume) seeks with
  tfds's split slicing `train[a:b]`, which skips records only inside the first shard it touches, then reads
  one block: the cost of a resume is bounded by a shard plus a block, never by the step. Reading on from
  where the last batch ended costs nothing extra. `records_read` counts the records pulled into Python.
  """

  def __init__(self, builder, seed: int, block: int):
    split = builder.info.splits['train']
    lengths = [int(x) for x in (split.shard_lengths or [split.num_examples])]
    if not sum(lengths):
      raise ConfigError(f'dataset {builder.info.name!r}: its train split lists no examples (dataset_info.json); '
                        'prepare it again')
    self._builder, self._seed, self._block = builder, seed, max(1, block)
    self._lengths, self._starts = lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    self.n = int(sum(lengths))
    self.records_read = 0
    self._reader, self._reader_at = None, None  # an iterator over the epoch stream, and its (epoch, offset)
    self._cached = (None, None)  # (epoch, block), its records in output order

  def _epoch_records(self, epoch: int, offset: int):
    """The records of epoch `epoch` from `offset` on, shard by shard, each shard read only from there."""
    import tensorflow_datasets as tfds
    order = np.random.default_rng([self._seed, epoch]).permutation(len(self._lengths))
    before = 0
    for shard in order:
      length = self._lengths[shard]
      if offset < before + length:
        a = int(self._starts[shard] + max(0, offset - before))
        b = int(self._starts[shard] + length)
        for example in tfds.as_numpy(self._builder.as_dataset(split=f'train[{a}:{b}]', shuffle_files=False)):
          self.records_read += 1
          yield example['text']
      before += length

  def _block_records(self, epoch: int, j: int) -> list:
    start = j * self._block
    size = min(self._block, self.n - start)
    if self._reader is None or self._reader_at != (epoch, start):
      self._reader = self._epoch_records(epoch, start)  # seek: a fresh reader (resume, or a jump)
    records = [next(self._reader) for _ in range(size)]
    self._reader_at = (epoch, start + size)
    order = np.random.default_rng([self._seed, epoch, j]).permutation(size)
    return [records[i] for i in order]

  def texts(self, positions: np.ndarray) -> list:
    out = []
    for p in positions:
      epoch, offset = divmod(int(p), self.n)
      key = (epoch, offset // self._block)
      if self._cached[0] != key:
        self._cached = (key, self._block_records(*key))
      out.append(self._cached[1][offset % self._block])
    return out


class SentenceStreamDataset(Dataset):
  """tfds sentences (lm1b), [BOS] bytes [EOS], cut or padded to seq_len + 1 tokens.

  Training batch `s` holds the sentences at positions s*B .. s*B+B-1 of an endless stream that is a pure
  function of (seed, position), so a resumed run reads exactly the batches an uninterrupted one would:
  - ArrayRecord files (random access, `as_data_source`): epoch e is the seeded permutation
    `default_rng([seed, e])` of the training split, as for in-memory data; a batch reads just its sentences,
    so a resume at step s is O(1) in s.
  - TFRecord files (tfds's default format; no random access): `ShardedStream`, shards in a seeded order per
    epoch and blocks of `shuffle_buffer` sentences permuted; a resume seeks to its shard and offset, costing
    at most one shard plus one block, whatever the step.
  """

  def __init__(self, info: DatasetInfo, builder, seq_len: int, seed: int, shuffle_buffer: int, eval_examples: int):
    self.info, self._builder, self._seq_len, self._seed = info, builder, seq_len, seed
    self._eval_examples = eval_examples
    self._vocab = ByteVocab()
    try:  # random access exists only for ArrayRecord files
      self._source = builder.as_data_source(split='train')
    except Exception:  # noqa: BLE001 - tfds raises assorted types for a format without random access
      self._source = None
    # One permutation per epoch, not per step: for lm1b's 30M sentences a permutation takes seconds.
    self._permutations = EpochPermutations(seed, len(self._source)) if self._source is not None else None
    self._stream = ShardedStream(builder, seed, shuffle_buffer) if self._source is None else None

  def splits(self) -> list[str]:
    return ['train', 'validation', 'test']

  def _row(self, text) -> np.ndarray:
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, np.uint8).astype(np.int32) + self._vocab.offset
    return np.concatenate([[self._vocab.bos_id], ids, [self._vocab.eos_id]]).astype(np.int32)[:self._seq_len + 1]

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    local = host_slice(batch_size, process_index, process_count)
    if self._source is not None:
      indices = stream_indices(self._seed, step, batch_size, len(self._source), self._permutations)[local]
      texts = [self._source[int(i)]['text'] for i in indices]
    else:
      positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)[local]
      texts = self._stream.texts(positions)
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
