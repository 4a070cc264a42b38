"""Experiment configs: load a `get_config()` file, apply `--config.a.b=v` overrides, validate.

Every problem becomes one `ConfigError` whose message names the key and what was expected;
the CLI turns it into exit code 2.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Iterable, Sequence

import ml_collections


class ConfigError(ValueError):
  """A config, override or input that a person must fix; the message says how."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` and returns its `get_config([arg])`."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    candidate = os.path.join('experiments', path if path.endswith('.py') else path + '.py')
    if os.path.isfile(candidate):
      path = candidate
    else:
      raise ConfigError(
          f'config file {path!r} does not exist; expected a path to a Python file with get_config(), '
          f'e.g. experiments/digits_cnn.py')
  name = 'maasjax_experiment_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a broken config file is the user's to fix: say where.
    raise ConfigError(f'config file {path!r} failed to load: {type(e).__name__}: {e}') from e
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path!r} has no get_config() function')
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'{path}: get_config() returned {type(config).__name__}, expected ml_collections.ConfigDict')
  return config


def _suggest(key: str, options: Iterable[str]) -> str:
  close = difflib.get_close_matches(key, list(options), n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def _parse_bool(text: str, key: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ('true', '1', 'yes', 'on'):
    return True
  if lowered in ('false', '0', 'no', 'off'):
    return False
  raise ConfigError(f'--config.{key}={text!r}: expected a boolean (true/false)')


def parse_value(text: str, current: Any, key: str) -> Any:
  """Parses an override string into the type of the field it replaces."""
  if isinstance(current, bool):
    return _parse_bool(text, key)
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f'--config.{key}={text!r}: expected an integer') from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f'--config.{key}={text!r}: expected a number') from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = tuple(v.strip() for v in text.split(',')) if text else ()
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f'--config.{key} is a group of settings ({", ".join(sorted(current.keys()))}); '
                      f'set one of them, e.g. --config.{key}.{sorted(current.keys())[0]}=...')
  # None or anything else: a Python literal if it reads as one, else a string.
  if text.lower() in ('none', 'null'):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets `config.<dotted> = text` (parsed); unknown keys and wrong types raise ConfigError."""
  parts = dotted.split('.')
  node = config
  for i, part in enumerate(parts):
    prefix = '.'.join(parts[:i])
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f'--config.{dotted}: {prefix!r} is a value, not a group of settings')
    if part not in node:
      where = f'config.{prefix}' if prefix else 'the config'
      known = ', '.join(sorted(node.keys()))
      raise ConfigError(f'--config.{dotted}: unknown key {part!r} in {where}{_suggest(part, node.keys())}; '
                        f'known keys: {known}')
    if i < len(parts) - 1:
      node = node[part]
  last = parts[-1]
  current = node[last]
  value = parse_value(text, current, dotted)
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  try:
    with node.unlocked():
      node[last] = value
  except TypeError as e:
    raise ConfigError(f'--config.{dotted}={text!r}: expected {type(current).__name__}, got {type(value).__name__}') from e


def split_overrides(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """Separates `--config.a.b=v` / `--config.a.b v` overrides from other arguments."""
  overrides, rest = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      body = arg[len('--config.'):]
      if '=' in body:
        key, value = body.split('=', 1)
      elif i + 1 < len(argv):
        key, value = body, argv[i + 1]
        i += 1
      else:
        raise ConfigError(f'{arg}: missing value; write --config.{body}=VALUE')
      if not key:
        raise ConfigError(f'{arg}: missing key name after --config.')
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  config = load_config_file(spec)
  for key, value in overrides:
    apply_override(config, key, value)
  return config


def require(config: ml_collections.ConfigDict, dotted: str, kind: type | tuple[type, ...], check=None,
            expected: str = '') -> Any:
  """Fetches a required key, checking its type (and optional predicate) with a clear error."""
  node: Any = config
  for i, part in enumerate(dotted.split('.')):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f'config.{dotted} is missing; expected {expected or getattr(kind, "__name__", kind)}')
    node = node[part]
  if not isinstance(node, kind) or (isinstance(node, bool) and kind in (int, float)):
    raise ConfigError(f'config.{dotted}={node!r}: expected {expected or getattr(kind, "__name__", kind)}')
  if check is not None and not check(node):
    raise ConfigError(f'config.{dotted}={node!r}: expected {expected}')
  return node


def check_name(kind: str, name: str, known: Iterable[str]) -> None:
  known = sorted(known)
  if name not in known:
    raise ConfigError(f'unknown {kind} {name!r}{_suggest(str(name), known)}; known {kind}s: {", ".join(known)}')


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


WORKDIR_CONFIG = 'config.json'  # written by `maasjax train` into every workdir


def load_workdir_config(workdir: str, config_spec: str | None = None,
                        overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json), or `config_spec` with overrides if given.

  The one way every command that reads a trained workdir (eval, export, generate, compress) gets its config.
  """
  if config_spec:
    return load_config(config_spec, overrides)
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir!r} does not exist; expected a folder written by maasjax train')
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    raise ConfigError(f'workdir {workdir!r} has no {WORKDIR_CONFIG}; train a model there first with maasjax train '
                      '(or pass --config, the experiment that trained it)')
  with open(path) as f:
    try:
      config = from_json(f.read())
    except ValueError as e:
      raise ConfigError(f'{path} is not valid JSON ({e}); it should be the config maasjax train wrote') from None
  for key, value in overrides:
    apply_override(config, key, value)
  return config
