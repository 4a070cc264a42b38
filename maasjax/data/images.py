"""Image classification data: scikit-learn's embedded digits (offline default) and tfds datasets.

Raw inputs are kept as the dataset stores them (uint8 pixels for tfds, 0..16 intensities for
digits); normalisation is recorded in `DatasetInfo` and applied inside the model function so
that an exported model takes the raw pixels a client has.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from maasjax.config import ConfigError
from maasjax.data.base import ArrayDataset, DatasetInfo, seeded_split
from maasjax.data.tfds_source import prepared_builder

TFDS_IMAGE_DATASETS = ('mnist', 'fashion_mnist', 'cifar10')


def make_augment(aug: ml_collections.ConfigDict | None):
  """Random shift (zero pad + crop) and horizontal flip, from config.dataset.augment."""
  if aug is None:
    return None
  shift = int(aug.get('random_shift', 0) or 0)
  flip = bool(aug.get('horizontal_flip', False))
  if shift < 0:
    raise ConfigError(f'config.dataset.augment.random_shift={shift}: expected an integer >= 0')
  if not shift and not flip:
    return None

  def augment(x_BxHxWxC: np.ndarray, rng: np.random.Generator, part: slice = slice(None),
              global_batch: int | None = None) -> np.ndarray:
    """`x` holds rows `part` of a global batch: the draws are made for the whole batch and sliced, so a
    host augments its rows exactly as a single host would."""
    b, h, w, _ = x_BxHxWxC.shape
    n = global_batch or b
    out = x_BxHxWxC
    if shift:
      padded = np.zeros((b, h + 2 * shift, w + 2 * shift) + x_BxHxWxC.shape[3:], x_BxHxWxC.dtype)
      padded[:, shift:shift + h, shift:shift + w] = x_BxHxWxC  # np.pad's zeros, without its ~20 us per call
      dy = rng.integers(0, 2 * shift + 1, size=n)[part]
      dx = rng.integers(0, 2 * shift + 1, size=n)[part]
      rows = dy[:, None] + np.arange(h)[None, :]
      cols = dx[:, None] + np.arange(w)[None, :]
      out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
      flips = rng.random(n)[part] < 0.5
      out = np.where(flips[:, None, None, None], out[:, :, ::-1], out)
    return out

  return augment


def _norm_stats(x_train: np.ndarray, mode: str, max_value: float) -> tuple[list[float], list[float]]:
  if mode == 'standard':  # per channel mean/std of the training split
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.astype(np.float64).mean(axis=axes)
    std = x_train.astype(np.float64).std(axis=axes) + 1e-6
    return [float(v) for v in mean], [float(v) for v in std]
  if mode == 'scale':  # to [0, 1]
    c = x_train.shape[-1]
    return [0.0] * c, [float(max_value)] * c
  if mode == 'none':
    c = x_train.shape[-1]
    return [0.0] * c, [1.0] * c
  raise ConfigError(f'config.dataset.normalize={mode!r}: expected one of standard, scale, none')


def keep_classes(x: dict[str, np.ndarray], y: dict[str, np.ndarray], label_names: list[str], classes):
  """Only the examples of `classes` (config.dataset.classes, e.g. (5, 6, 7, 8, 9)), relabelled 0..k-1 in
  that order: a smaller task carved from a dataset (transfer learning between two halves of it)."""
  if not classes:
    return x, y, label_names
  n = len(label_names)
  if (not isinstance(classes, (tuple, list)) or len(set(classes)) != len(classes) or
      not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in classes) or len(classes) < 2):
    raise ConfigError(f'config.dataset.classes={classes!r}: expected at least two distinct labels in 0..{n - 1}, '
                      'e.g. (0, 1, 2, 3, 4)')
  relabel = np.full(n, -1, np.int64)
  relabel[list(classes)] = np.arange(len(classes))
  keep = {k: relabel[y[k]] >= 0 for k in y}
  return ({k: x[k][keep[k]] for k in x}, {k: relabel[y[k][keep[k]]] for k in y},
          [label_names[c] for c in classes])


def _build(name: str, x: dict[str, np.ndarray], y: dict[str, np.ndarray], label_names: list[str],
           cfg: ml_collections.ConfigDict, seed: int, max_value: float) -> ArrayDataset:
  x, y, label_names = keep_classes(x, y, label_names, cfg.get('classes', ()))
  mean, std = _norm_stats(x['train'], cfg.get('normalize', 'standard'), max_value)
  info = DatasetInfo(
      name=name, task='classification', input_shape=tuple(int(d) for d in x['train'].shape[1:]),
      input_dtype=str(x['train'].dtype), num_classes=len(label_names), label_names=label_names,
      num_examples={k: int(len(v)) for k, v in y.items()}, input_mean=mean, input_std=std)
  splits = {k: {'inputs': x[k], 'labels': y[k].astype(np.int32)} for k in x}
  return ArrayDataset(info, splits, seed=seed, augment=make_augment(cfg.get('augment')))


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as (images [1797, 8, 8] float64, labels [1797] int), read from its data file
  without importing sklearn.datasets (1.6 s of every digits run's start-up on a 2-core CPU); the same arrays
  as `sklearn.datasets.load_digits()`, which is the fallback should a scikit-learn release move the file."""
  import importlib.util
  spec = importlib.util.find_spec('sklearn')
  path = os.path.join(os.path.dirname(spec.origin), 'datasets', 'data', 'digits.csv.gz') if spec else ''
  if os.path.isfile(path):
    table = np.loadtxt(path, delimiter=',')
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
  from sklearn.datasets import load_digits as sk_load_digits
  data = sk_load_digits()
  return data.images, data.target


def load_digits(cfg: ml_collections.ConfigDict, seed: int) -> ArrayDataset:
  """scikit-learn's bundled 8x8 digits (1,797 images): a fixed, seeded train/validation/test split."""
  images, labels = sklearn_digits()
  images = images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
  labels = labels.astype(np.int32)
  val, test = float(cfg.get('validation_fraction', 0.1)), float(cfg.get('test_fraction', 0.2))
  if not (0 < test < 1 and 0 <= val < 1 and val + test < 1):
    raise ConfigError(f'config.dataset: validation_fraction={val}, test_fraction={test}; expected fractions in '
                      '(0, 1) that sum to less than 1')
  # The split seed is fixed (not config.seed) so that every run is scored on the same test set.
  idx = seeded_split(len(labels), {'test': test, 'validation': val, 'train': 1 - val - test},
                     seed=int(cfg.get('split_seed', 0)))
  x = {k: images[idx[k]] for k in ('train', 'validation', 'test')}
  y = {k: labels[idx[k]] for k in ('train', 'validation', 'test')}
  return _build('digits', x, y, [str(i) for i in range(10)], cfg, seed, max_value=16.0)


def load_tfds_split(builder, name: str, split: str):
  """One whole split of a prepared tfds dataset as numpy arrays."""
  import tensorflow_datasets as tfds
  # Batch and concatenate rather than batch_size=-1, which aborts the process under
  # tfds.testing.mock_data in tensorflow 2.21 (std::length_error in the generator op).
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(4096)
  parts = list(tfds.as_numpy(ds))
  if not parts:
    raise ConfigError(f'split {split!r} of tfds dataset {name!r} is empty')
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_tfds_images(name: str, cfg: ml_collections.ConfigDict, seed: int) -> ArrayDataset:
  """A tfds image dataset with a seeded validation split carved from its train split."""
  builder = prepared_builder(name, cfg, 'image')
  info, train, test = builder.info, load_tfds_split(builder, name, 'train'), load_tfds_split(builder, name, 'test')
  x_train, y_train = np.asarray(train['image']), np.asarray(train['label'])
  val_fraction = float(cfg.get('validation_fraction', 0.1))
  idx = seeded_split(len(y_train), {'validation': val_fraction, 'train': 1 - val_fraction},
                     seed=int(cfg.get('split_seed', 0)))
  x = {'train': x_train[idx['train']], 'validation': x_train[idx['validation']], 'test': np.asarray(test['image'])}
  y = {'train': y_train[idx['train']], 'validation': y_train[idx['validation']], 'test': np.asarray(test['label'])}
  label_names = list(info.features['label'].names)
  return _build(name, x, y, label_names, cfg, seed, max_value=255.0)
