"""Generated digit-string tasks with held-out inputs never seen in training: `digit_seq2seq` (reverse,
sort, or add '123+45' -> '168'; targets end with EOS) and `majority_digit` (classify by the most
frequent digit)."""
from __future__ import annotations

import ml_collections
import numpy as np

from maasjax.config import ConfigError
from maasjax.data.base import ArrayDataset, DatasetInfo
from maasjax.tokenizers import CharVocab

SEQ2SEQ_TASKS = ('reverse', 'sort', 'add')
DIGITS = '0123456789'


def _sample(task: str, rng: np.random.Generator, min_len: int, max_len: int) -> tuple[str, str]:
  if task == 'add':
    a, b = (int(rng.integers(0, 10 ** int(rng.integers(min_len, max_len + 1)))) for _ in range(2))
    return f'{a}+{b}', str(a + b)
  s = ''.join(rng.choice(list(DIGITS), size=int(rng.integers(min_len, max_len + 1))))
  return s, s[::-1] if task == 'reverse' else ''.join(sorted(s))


def unique_examples(sample, sizes: dict[str, int], rng: np.random.Generator, what: str) -> dict[str, list]:
  """Disjoint splits of distinct examples (`sample(rng) -> (key, ...)`), held-out splits drawn first."""
  seen, out = set(), {}
  for split in sorted(sizes, key=lambda s: s == 'train'):
    out[split] = []
    attempts = 0
    while len(out[split]) < sizes[split]:
      example = sample(rng)
      attempts += 1
      if attempts > 20 * sum(sizes.values()) + 1000:
        raise ConfigError(f'{what}: only {len(seen)} distinct examples found; lower the split sizes or allow '
                          'longer sequences')
      if example[0] not in seen:
        seen.add(example[0])
        out[split].append(example)
  return out


def _encode_rows(vocab: CharVocab, strings: list[str], width: int, eos: bool) -> np.ndarray:
  out = np.zeros((len(strings), width), np.int32)
  for i, s in enumerate(strings):
    ids = vocab.encode(s)
    if eos:
      ids = np.append(ids, vocab.eos_id)
    out[i, :len(ids)] = ids
  return out


def _sizes(cfg, train: int, held_out: int) -> dict[str, int]:
  return {'train': int(cfg.get('num_train', train)), 'validation': int(cfg.get('num_validation', held_out)),
          'test': int(cfg.get('num_test', held_out))}


def load_digit_seq2seq(cfg: ml_collections.ConfigDict, seed: int) -> ArrayDataset:
  task = cfg.get('task', 'reverse')
  if task not in SEQ2SEQ_TASKS:
    raise ConfigError(f'config.dataset.task={task!r}: expected one of {", ".join(SEQ2SEQ_TASKS)}')
  lo, hi = int(cfg.get('min_len', 1)), int(cfg.get('max_len', 12))
  if not 1 <= lo <= hi:
    raise ConfigError(f'config.dataset.min_len={lo}, max_len={hi}: expected 1 <= min_len <= max_len')
  vocab = CharVocab(DIGITS + '+', with_bos_eos=True)
  rng = np.random.default_rng(int(cfg.get('generator_seed', 0)))  # fixed: the same test set for every run
  splits = unique_examples(lambda r: _sample(task, r, lo, hi), _sizes(cfg, 20000, 500), rng, f'digit_seq2seq/{task}')
  in_width = 2 * hi + 1 if task == 'add' else hi
  out_width = hi + 2 if task == 'add' else hi + 1  # + EOS (and a carry digit for sums)
  arrays = {k: {'inputs': _encode_rows(vocab, [a for a, _ in v], in_width, eos=False),
                'labels': _encode_rows(vocab, [b for _, b in v], out_width, eos=True)} for k, v in splits.items()}
  info = DatasetInfo(name='digit_seq2seq', task='seq2seq', input_shape=(in_width,), input_dtype='int32',
                     num_classes=vocab.vocab_size, label_names=[], num_examples={k: len(v) for k, v in splits.items()},
                     extra={'tokenizer': vocab.to_dict(), 'model_fields': {'vocab_size': vocab.vocab_size},
                            'target_length': out_width, 'seq2seq_task': task})
  return ArrayDataset(info, arrays, seed=seed)


def load_majority_digit(cfg: ml_collections.ConfigDict, seed: int) -> ArrayDataset:
  """Digit strings of varied length (padded with 0) labelled by their unique most frequent digit."""
  lo, hi = int(cfg.get('min_len', 8)), int(cfg.get('max_len', 24))
  if not 1 <= lo <= hi:
    raise ConfigError(f'config.dataset.min_len={lo}, max_len={hi}: expected 1 <= min_len <= max_len')
  vocab = CharVocab(DIGITS)

  def sample(rng):
    while True:
      s = ''.join(rng.choice(list(DIGITS), size=int(rng.integers(lo, hi + 1))))
      counts = np.bincount([int(c) for c in s], minlength=10)
      if (counts == counts.max()).sum() == 1:  # a unique answer
        return s, int(np.argmax(counts))

  rng = np.random.default_rng(int(cfg.get('generator_seed', 0)))
  splits = unique_examples(sample, _sizes(cfg, 20000, 1000), rng, 'majority_digit')
  arrays = {k: {'inputs': _encode_rows(vocab, [s for s, _ in v], hi, eos=False),
                'labels': np.array([y for _, y in v], np.int32)} for k, v in splits.items()}
  info = DatasetInfo(name='majority_digit', task='sequence_classification', input_shape=(hi,), input_dtype='int32',
                     num_classes=10, label_names=list(DIGITS), num_examples={k: len(v) for k, v in splits.items()},
                     extra={'tokenizer': vocab.to_dict(), 'model_fields': {'vocab_size': vocab.vocab_size}})
  return ArrayDataset(info, arrays, seed=seed)
