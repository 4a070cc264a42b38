"""TF Serving's base-path layout `BASE/NAME/VERSION/`, and the metadata asset beside each model."""
from __future__ import annotations

import json
import os
import re
from typing import Any

from maasjax.config import ConfigError

METADATA_PATH = os.path.join('assets.extra', 'maasjax.json')  # TF Serving ignores assets.extra/
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')


def check_model_name(name: str) -> str:
  if not _NAME_RE.match(name or ''):
    raise ConfigError(f'model name {name!r}: expected letters, digits, "_", "." or "-" (starting with a letter '
                      'or digit, at most 128 characters), as it appears in URLs')
  return name


def list_models(base_path: str) -> list[str]:
  if not os.path.isdir(base_path):
    raise ConfigError(f'model base path {base_path!r} is not a directory; expected a folder of NAME/VERSION/ '
                      'SavedModels written by maasjax export')
  return sorted(d for d in os.listdir(base_path) if _NAME_RE.match(d) and os.path.isdir(os.path.join(base_path, d)))


def list_versions(model_dir: str) -> list[int]:
  """Integer-named subdirectories, ascending (TF Serving ignores any other name, e.g. a temp dir)."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(d) for d in os.listdir(model_dir)
                if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))


def next_version(model_dir: str) -> int:
  versions = list_versions(model_dir)
  return versions[-1] + 1 if versions else 1


def read_metadata(version_dir: str) -> dict[str, Any] | None:
  path = os.path.join(version_dir, METADATA_PATH)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def catalog(base_path: str) -> list[dict[str, Any]]:
  """One entry per model version under the base path: task, inputs, size, recorded test metrics."""
  entries = []
  for name in list_models(base_path):
    for version in list_versions(os.path.join(base_path, name)):
      vdir = os.path.join(base_path, name, str(version))
      try:
        meta = read_metadata(vdir) or {}
      except (OSError, ValueError) as e:
        meta = {'error': f'unreadable metadata: {e}'}
      sig = meta.get('signatures', {}).get('serving_default', {})
      entries.append({
          'name': name, 'version': version, 'task': meta.get('task', 'unknown'),
          'inputs': {k: {'shape': v['shape'], 'dtype': v['dtype']} for k, v in sig.get('inputs', {}).items()},
          'signatures': sorted(meta.get('signatures', {})), 'size_bytes': dir_size(vdir),
          'metrics': {k: v for k, v in meta.get('metrics', {}).items() if k.startswith('test/')},
          'epsilon': (meta.get('privacy') or {}).get('privacy/epsilon'),  # None: not trained privately
          'has_saved_model': os.path.exists(os.path.join(vdir, 'saved_model.pb')),
          **({'error': meta['error']} if 'error' in meta else {})})
  return entries
