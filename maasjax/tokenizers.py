"""Tokenizers rebuilt from `DatasetInfo.extra['tokenizer']`: `CharVocab` (a character per id, optional
BOS/EOS) and `ByteVocab` (UTF-8 bytes as ids 3..258 after PAD, BOS, EOS). Id 0 is padding everywhere.
A leaf module (numpy only): data, export and the server (which decodes completions) all read it."""
from __future__ import annotations

from typing import Any

import numpy as np

from maasjax.config import ConfigError
from maasjax.spec import BOS_ID, EOS_ID


class CharVocab:
  def __init__(self, chars: str, with_bos_eos: bool = False):
    if len(set(chars)) != len(chars):
      raise ValueError('CharVocab: duplicate characters')
    self.chars = chars
    self.with_bos_eos = with_bos_eos
    self.bos_id, self.eos_id = (BOS_ID, EOS_ID) if with_bos_eos else (None, None)
    self.offset = 3 if with_bos_eos else 1
    self.vocab_size = len(chars) + self.offset
    self._index = {c: i + self.offset for i, c in enumerate(chars)}

  def encode(self, text: str) -> np.ndarray:
    unknown = sorted(set(text) - set(self._index))
    if unknown:
      raise ConfigError(f'characters {"".join(unknown)!r} are not in the vocabulary ({len(self.chars)} characters '
                        f'seen in the training text)')
    return np.array([self._index[c] for c in text], np.int32)

  def decode(self, ids) -> str:
    return ''.join(self.chars[i - self.offset] for i in np.asarray(ids).tolist() if i >= self.offset)

  def to_dict(self) -> dict[str, Any]:
    return {'kind': 'char', 'chars': self.chars, 'with_bos_eos': self.with_bos_eos}


class ByteVocab:
  bos_id, eos_id, offset, vocab_size = BOS_ID, EOS_ID, 3, 259

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + self.offset

  def decode(self, ids) -> str:
    data = bytes(i - self.offset for i in np.asarray(ids).tolist() if i >= self.offset)
    return data.decode('utf-8', errors='replace')

  def to_dict(self) -> dict[str, Any]:
    return {'kind': 'byte'}


def tokenizer_from_dict(spec: dict[str, Any]):
  if spec.get('kind') == 'char':
    return CharVocab(spec['chars'], bool(spec.get('with_bos_eos', False)))
  if spec.get('kind') == 'byte':
    return ByteVocab()
  raise ConfigError(f'unknown tokenizer {spec!r}; expected kind "char" or "byte"')


def tokenizer_from_info(info) -> CharVocab | ByteVocab:
  extra = info.extra if hasattr(info, 'extra') else info.get('extra', {})
  if 'tokenizer' not in extra:
    raise ConfigError(f'dataset {getattr(info, "name", "")!r} has no tokenizer: it is not a text dataset')
  return tokenizer_from_dict(extra['tokenizer'])
