"""Dataset interface shared by every modality, and the in-memory array dataset.

The training data order is a pure function of (seed, step): batch `s` holds the examples at
global positions `s*B ... s*B+B-1` of an endless stream whose epoch `e` is the permutation
`default_rng([seed, e])` of the training set. A run resumed at step `s` therefore sees exactly
the batches an uninterrupted run would. Each host takes its own slice of the global batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

Batch = dict[str, Any]


@dataclasses.dataclass
class DatasetInfo:
  """What the model, the loss and the exporter need to know about the data."""
  name: str
  task: str  # 'classification' (more tasks join with the model zoo)
  input_shape: tuple[int, ...]  # one example's raw input, e.g. (28, 28, 1)
  input_dtype: str  # raw dtype a client sends, e.g. 'uint8'
  num_classes: int
  label_names: list[str]
  num_examples: dict[str, int]
  # Preprocessing applied inside the model function (and so inside the exported graph):
  # x -> (x - input_mean) / input_std, per channel.
  input_mean: list[float] = dataclasses.field(default_factory=lambda: [0.0])
  input_std: list[float] = dataclasses.field(default_factory=lambda: [1.0])
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class Dataset:
  """A training stream addressed by step, plus finite, padded evaluation splits."""
  info: DatasetInfo

  def train_batch(self, step: int, batch_size: int, process_index: int = 0, process_count: int = 1) -> Batch:
    raise NotImplementedError

  def eval_batches(self, split: str, batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Batch]:
    raise NotImplementedError

  def splits(self) -> list[str]:
    raise NotImplementedError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class EpochPermutations:
  """`epoch_permutation(seed, e, n)` per epoch, computed once and kept for the last `keep` epochs used.

  A batch spans at most two epochs (when B <= n), so consecutive steps reuse the same permutation: for a
  large split (lm1b: 30M sentences, 1-3 s and 120 MB per permutation) a step costs a slice, not a new
  permutation. The values are those of `epoch_permutation`; only the work is shared. `computed` counts
  the permutations built.
  """

  def __init__(self, seed: int, n: int, keep: int = 2):
    self.seed, self.n, self.keep, self.computed = seed, n, keep, 0
    self._cache: dict[int, np.ndarray] = {}

  def __call__(self, epoch: int) -> np.ndarray:
    perm = self._cache.pop(epoch, None)
    if perm is None:
      perm = epoch_permutation(self.seed, epoch, self.n)
      perm = perm.astype(np.int32) if self.n < 2**31 else perm  # half the memory for any real split
      perm.setflags(write=False)
      self.computed += 1
    self._cache[epoch] = perm  # most recently used last
    while len(self._cache) > self.keep:
      del self._cache[next(iter(self._cache))]
    return perm


def stream_indices(seed: int, step: int, batch_size: int, n: int,
                   permutations: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
  """Indices into the training set of global batch `step` (a pure function of its arguments).

  `permutations` (epoch -> permutation of range(n), e.g. an `EpochPermutations`) shares the work between
  steps; without it each call builds the permutations it needs."""
  perm_of = permutations or (lambda epoch: epoch_permutation(seed, epoch, n))
  positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epochs, offsets = positions // n, positions % n
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = perm_of(int(epoch))[offsets[sel]]
  return out


def host_slice(batch_size: int, process_index: int, process_count: int) -> slice:
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} does not divide among {process_count} processes')
  per_host = batch_size // process_count
  return slice(process_index * per_host, (process_index + 1) * per_host)


class ArrayDataset(Dataset):
  """Whole splits held in host memory as numpy arrays keyed 'inputs', 'labels'."""

  def __init__(self, info: DatasetInfo, splits: dict[str, dict[str, np.ndarray]], seed: int,
               augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None):
    self.info = info
    self._splits = splits
    self._seed = seed
    self._augment = augment
    self._permutations = EpochPermutations(seed, len(splits['train']['labels'])) if 'train' in splits else None

  def splits(self) -> list[str]:
    return list(self._splits)

  def split_arrays(self, split: str) -> dict[str, np.ndarray]:
    return self._splits[split]

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    train = self._splits['train']
    n = len(train['labels'])
    idx = stream_indices(self._seed, step, batch_size, n, self._permutations)
    local = host_slice(batch_size, process_index, process_count)
    batch = {k: v[idx[local]] for k, v in train.items()}
    if self._augment is not None:
      # Augmentation randomness is a pure function of (seed, step), drawn for the global batch: each
      # host augments only its rows, exactly as one host would.
      rng = np.random.default_rng([self._seed, step, 0, 7])
      batch['inputs'] = self._augment(batch['inputs'], rng, local, batch_size)
    return batch

  def rows_batch(self, step: int, indices: np.ndarray, mask: np.ndarray, process_index: int = 0,
                 process_count: int = 1) -> Batch:
    """The training rows at `indices` (a global batch, e.g. a Poisson sample) with their `mask`, this
    process's slice, augmented as `train_batch` would (randomness from (seed, step))."""
    train = self._splits['train']
    size = len(indices)
    local = host_slice(size, process_index, process_count)
    batch = {k: v[indices[local]] for k, v in train.items()}
    if self._augment is not None:
      rng = np.random.default_rng([self._seed, step, 0, 7])
      batch['inputs'] = self._augment(batch['inputs'], rng, local, size)
    batch['mask'] = np.asarray(mask, np.float32)[local]
    return batch

  def eval_batches(self, split, batch_size, process_index=0, process_count=1):
    return padded_batches(self._splits[split], batch_size, process_index, process_count)


def padded_batches(arrays: dict[str, np.ndarray], batch_size: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Batch]:
  """A whole split in order, in batches of `batch_size` rows (the last zero-padded); `mask` marks real rows.
  Each process gets its slice of every global batch, so evaluation over hosts counts every example once."""
  n = len(next(iter(arrays.values())))
  local = host_slice(batch_size, process_index, process_count)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    batch = {}
    for k, v in arrays.items():
      pad = np.zeros((batch_size - (stop - start),) + v.shape[1:], v.dtype)
      batch[k] = np.concatenate([v[start:stop], pad])[local]
    mask = np.zeros(batch_size, np.float32)
    mask[:stop - start] = 1.0
    batch['mask'] = mask[local]
    yield batch


def seeded_split(n: int, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
  """Splits range(n) into named, disjoint index sets by a seeded permutation (last name takes the rest)."""
  perm = np.random.default_rng(seed).permutation(n)
  out, start = {}, 0
  names = list(fractions)
  for i, name in enumerate(names):
    stop = n if i == len(names) - 1 else start + int(round(fractions[name] * n))
    out[name] = np.sort(perm[start:stop])
    start = stop
  return out
