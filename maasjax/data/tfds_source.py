"""tfds datasets from `config.dataset.data_dir`: one builder check, and one message when a dataset is missing."""
from __future__ import annotations

import os

import ml_collections

from maasjax.config import ConfigError

# The embedded config of the same task, trainable offline, suggested when a tfds dataset is missing.
EMBEDDED_ALTERNATIVES = {
    'image': 'experiments/digits_cnn.py',
    'text': 'experiments/char_lm.py',
    'graph': 'experiments/graph_families_gcn.py',
}


def _first_line(error: Exception) -> str:
  return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def not_prepared_message(name: str, data_dir: str | None, kind: str, error: Exception, extra_flags: str = '',
                         downloaded: bool = False) -> str:
  where = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  tried = ('download_and_prepare finished but the data cannot be read' if downloaded else
           'nothing was downloaded (config.dataset.download is false)')
  return (f'dataset {name!r} is not prepared in data_dir {where!r} ({_first_line(error)}); {tried}. '
          f'Prepare it on a machine with network access with\n'
          f'  python -m tensorflow_datasets.scripts.download_and_prepare --datasets={name} --data_dir={where}'
          f'{extra_flags}\n'
          f'then copy that folder here and pass --config.dataset.data_dir={where}, or set '
          f'--config.dataset.download=true where the network is reachable '
          f'(or train the embedded {kind} config offline: --config {EMBEDDED_ALTERNATIVES[kind]})')


def prepared_builder(name: str, cfg: ml_collections.ConfigDict, kind: str, check_split: str = 'test',
                     prepare_format: str | None = None, extra_flags: str = ''):
  """The tfds builder of a prepared dataset (downloaded first if `cfg.download`), or one ConfigError.

  `prepare_format` is the file format a download writes (e.g. 'array_record' for random access); a copy
  already prepared is read in whatever format it has."""
  import tensorflow_datasets as tfds
  data_dir = cfg.get('data_dir') or None
  download = bool(cfg.get('download', False))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
      try:
        builder.download_and_prepare(**({'file_format': prepare_format} if prepare_format else {}))
      except Exception as e:  # noqa: BLE001 - network and disk failures come in many types
        raise ConfigError(f'dataset {name!r}: download_and_prepare into data_dir {data_dir!r} failed '
                          f'({_first_line(e)}); check the network and the disk, or prepare it elsewhere and '
                          f'copy it here') from None
    builder.as_dataset(split=check_split)  # raises here if the data is not prepared
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 - tfds raises assorted types for a dataset that is not prepared
    raise ConfigError(not_prepared_message(name, data_dir, kind, e, extra_flags, downloaded=download)) from None
  return builder
