"""Dataset registry: `config.dataset.name` -> a loader `(dataset_config, seed) -> Dataset`."""
from __future__ import annotations

import functools
from typing import Callable

import ml_collections

from maasjax.config import check_name
from maasjax.data.base import ArrayDataset, Dataset, DatasetInfo  # noqa: F401 - the package's public types
from maasjax.data import graphs, images, sequences, text

DATASETS: dict[str, Callable[[ml_collections.ConfigDict, int], Dataset]] = {
    'digits': images.load_digits,
    'karate': graphs.load_karate,
    'digits_knn': graphs.load_digits_knn,
    'graph_families': graphs.load_graph_families,
    'ogbg_molpcba': graphs.load_ogbg_molpcba,
    'char_text': text.load_char_text,
    'tiny_shakespeare': text.load_tiny_shakespeare,
    'lm1b': text.load_lm1b,
    'digit_seq2seq': sequences.load_digit_seq2seq,
    'majority_digit': sequences.load_majority_digit,
    **{name: functools.partial(images.load_tfds_images, name) for name in images.TFDS_IMAGE_DATASETS},
}


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  name = config.dataset.name
  check_name('dataset', name, DATASETS)
  return DATASETS[name](config.dataset, int(config.seed))
