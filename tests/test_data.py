"""Data: the embedded digits split, the (seed, step)-pure training order, padded eval, hosts."""
import numpy as np
import pytest

from conftest import experiment_config
from maasjax.config import ConfigError
from maasjax.data import load_dataset
from maasjax.data.base import EpochPermutations, stream_indices


def _digits(**overrides):
  return load_dataset(experiment_config('digits_cnn', **overrides))


def test_digits_split_is_fixed_disjoint_and_complete():
  a, b = _digits(), _digits(seed=123)  # the split does not depend on the training seed
  sizes = {s: len(a.split_arrays(s)['labels']) for s in ('train', 'validation', 'test')}
  assert sizes == {'train': 1258, 'validation': 180, 'test': 359}
  assert sum(sizes.values()) == 1797
  for split in sizes:
    np.testing.assert_array_equal(a.split_arrays(split)['inputs'], b.split_arrays(split)['inputs'])
  rows = {s: {r.tobytes() + bytes([int(l)]) for r, l in zip(a.split_arrays(s)['inputs'], a.split_arrays(s)['labels'])}
          for s in sizes}
  # A few digits are exact duplicates in the source data; nearly all rows are unique to a split.
  assert len(rows['test'] & rows['train']) <= 3
  info = a.info
  assert info.input_shape == (8, 8, 1) and info.num_classes == 10
  assert abs(info.input_mean[0] - a.split_arrays('train')['inputs'].mean()) < 1e-4


def test_training_order_is_a_pure_function_of_seed_and_step():
  n, bs = 50, 16
  seen = np.concatenate([stream_indices(0, s, bs, n) for s in range(4)])  # 64 = one epoch + 14
  assert sorted(seen[:n].tolist()) == list(range(n))  # first epoch: each example once
  np.testing.assert_array_equal(stream_indices(0, 3, bs, n), stream_indices(0, 3, bs, n))
  assert not np.array_equal(stream_indices(0, 0, bs, n), stream_indices(1, 0, bs, n))
  ds = _digits()
  np.testing.assert_array_equal(ds.train_batch(7, 32)['inputs'], _digits().train_batch(7, 32)['inputs'])


def test_each_epoch_permutation_is_built_once_not_once_per_step():
  """lm1b's 30M-sentence permutation takes seconds: a run builds it once per epoch, with the same values."""
  n, bs = 50, 16
  perms = EpochPermutations(0, n)
  shared = [stream_indices(0, s, bs, n, perms) for s in range(10)]  # 160 positions: epochs 0..3
  for s, idx in enumerate(shared):
    np.testing.assert_array_equal(idx, stream_indices(0, s, bs, n))
  assert perms.computed == 4
  stream_indices(0, 3, bs, n, perms)  # back to epochs 0 and 1: only the last two epochs are kept
  assert perms.computed == 6


def test_augmentation_is_deterministic_and_shifts_pixels():
  ds = _digits()
  plain = _digits(**{'dataset.augment.random_shift': 0})
  a, b, raw = ds.train_batch(3, 64), ds.train_batch(3, 64), plain.train_batch(3, 64)
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  np.testing.assert_array_equal(a['labels'], raw['labels'])
  assert not np.array_equal(a['inputs'], raw['inputs'])
  # Each augmented image is its raw image shifted by at most one pixel (zero-filled).
  padded = np.pad(raw['inputs'], ((0, 0), (1, 1), (1, 1), (0, 0)))
  for aug_x, pad_x in zip(a['inputs'], padded):
    shifts = [pad_x[dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
    assert any(np.array_equal(aug_x, s) for s in shifts)


def test_host_slices_partition_the_global_batch():
  ds = _digits(**{'dataset.augment.random_shift': 0})
  whole = ds.train_batch(5, 32)
  parts = [ds.train_batch(5, 32, process_index=i, process_count=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([p['labels'] for p in parts]), whole['labels'])


def test_eval_batches_pad_and_mask_exactly_once():
  ds = _digits()
  batches = list(ds.eval_batches('test', 128))
  assert all(b['inputs'].shape == (128, 8, 8, 1) for b in batches)
  assert sum(b['mask'].sum() for b in batches) == 359
  labels = np.concatenate([b['labels'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, ds.split_arrays('test')['labels'])


def test_bad_dataset_settings():
  with pytest.raises(ConfigError, match="unknown dataset .digitz.*known datasets: .*cifar10, .*digits, .*mnist"):
    _digits(**{'dataset.name': 'digitz'})
  with pytest.raises(ConfigError, match='normalize'):
    _digits(**{'dataset.normalize': 'zscore'})
  with pytest.raises(ConfigError, match='test_fraction'):
    _digits(**{'dataset.test_fraction': 0.95})


def test_not_prepared_message_says_whether_a_download_was_tried():
  from maasjax.data.tfds_source import not_prepared_message
  error = FileNotFoundError('no dataset_info.json')
  offline = not_prepared_message('lm1b', '/d', 'text', error)
  tried = not_prepared_message('lm1b', '/d', 'text', error, downloaded=True)
  assert "is not prepared in data_dir '/d'" in offline and 'nothing was downloaded' in offline
  assert 'nothing was downloaded' not in tried and 'download_and_prepare finished' in tried
  assert all('--config experiments/char_lm.py' in m for m in (offline, tried))
