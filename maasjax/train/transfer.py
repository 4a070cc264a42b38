"""Transfer learning: a new run initialised from another workdir's checkpoint (`config.init_from`).

    config.init_from = {'workdir': 'runs/pretrained', 'step': -1, 'skip': (), 'freeze': ()}

Parameters and model state (BatchNorm statistics) whose path and shape match are loaded from the source's
checkpoint (`step`, -1 = its latest); a leaf matched by a `skip` regex, missing from the source or shaped
differently (a new head for another number of classes) keeps its fresh initialisation, and the log lists
it. Parameters matched by a `freeze` regex are never updated (an optax partition whose frozen side keeps
no state). The optimizer state and the step start fresh. Only the source's params and model state are
read (an Orbax partial restore, straight into this run's shardings), so a checkpoint saved on 8 devices
initialises a run on 1. The plan is checked in `setup`, before anything is written; the arrays are read
when the run starts from scratch (a resume restores its own checkpoint and ignores `init_from`).
"""
from __future__ import annotations

import dataclasses
import os
import re

import jax
import ml_collections
import numpy as np
import optax

from maasjax.config import ConfigError
from maasjax.parallel import path_name  # 'Conv_0/kernel' for a key path

PARTS = ('params', 'model_state')  # what is loaded; the optimizer state and the step start fresh
KEYS = ('workdir', 'step', 'skip', 'freeze')


@dataclasses.dataclass(frozen=True)
class InitFrom:
  workdir: str
  step: int
  skip: tuple[str, ...]
  freeze: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a run takes from the source: `loaded` leaf names, `fresh` {name: why it stays initialised}."""
  source: InitFrom
  step: int
  path: str  # the checkpoint item's directory
  loaded: tuple[str, ...]
  fresh: dict

  def describe(self) -> str:
    lines = [f'init_from {self.source.workdir} (step {self.step}): loaded {len(self.loaded)} arrays']
    lines += [f'  freshly initialised: {name} ({why})' for name, why in self.fresh.items()]
    if self.source.freeze:
      lines.append(f'  frozen (not updated): parameters matching {", ".join(self.source.freeze)}')
    return '\n'.join(lines)


def _patterns(value, key: str) -> tuple[str, ...]:
  if isinstance(value, str):
    value = (value,) if value else ()
  if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
    raise ConfigError(f'config.init_from.{key}={value!r}: expected a tuple of regular expressions over parameter '
                      "paths, e.g. ('Dense_1',)")
  for pattern in value:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'config.init_from.{key}: {pattern!r} is not a regular expression ({e})') from None
  return tuple(value)


def settings(config: ml_collections.ConfigDict) -> InitFrom | None:
  """config.init_from, checked; None when no source workdir is set."""
  section = config.get('init_from')
  if section is None:
    return None
  if not isinstance(section, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f'config.init_from={section!r}: expected a dict with keys {", ".join(KEYS)}')
  unknown = sorted(set(section.keys()) - set(KEYS))
  if unknown:
    raise ConfigError(f'config.init_from.{unknown[0]}: unknown key; expected {", ".join(KEYS)}')
  workdir = section.get('workdir', '')
  if not workdir:
    if section.get('freeze'):
      raise ConfigError('config.init_from.freeze is set but config.init_from.workdir is empty: freezing applies '
                        'to parameters loaded from a trained workdir')
    return None
  if not isinstance(workdir, str):
    raise ConfigError(f'config.init_from.workdir={workdir!r}: expected the path of a trained workdir')
  step = section.get('step', -1)
  if isinstance(step, bool) or not isinstance(step, int) or step < -1:
    raise ConfigError(f'config.init_from.step={step!r}: expected a checkpoint step, or -1 for the latest')
  return InitFrom(workdir, step, _patterns(section.get('skip', ()), 'skip'), _patterns(section.get('freeze', ()), 'freeze'))


def _item_dir(source: InitFrom) -> tuple[int, str]:
  directory = os.path.join(source.workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise ConfigError(f'config.init_from.workdir={source.workdir!r} has no checkpoints/ folder; expected a workdir '
                      'that maasjax train wrote')
  # Orbax renames a step's folder to its number only once the write completed.
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d, 'default')))
  if not steps:
    raise ConfigError(f'config.init_from.workdir={source.workdir!r} holds no complete checkpoint')
  step = steps[-1] if source.step == -1 else source.step
  if step not in steps:
    raise ConfigError(f'config.init_from.step={source.step}: {source.workdir!r} has checkpoints at steps '
                      f'{", ".join(map(str, steps))}')
  return step, os.path.join(os.path.abspath(directory), str(step), 'default')


def _named(tree, prefix: str) -> dict:
  return {f'{prefix}/{path_name(p)}' if p else prefix: x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def has_checkpoint(workdir: str) -> bool:
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))


def plan(config: ml_collections.ConfigDict, abstract_state) -> Plan | None:
  """Which of this run's parameters and model state come from config.init_from's checkpoint (shapes only,
  nothing read but the checkpoint's metadata); a ConfigError when nothing would load."""
  source = settings(config)
  if source is None:
    return None
  import orbax.checkpoint as ocp
  step, path = _item_dir(source)
  import absl.logging
  verbosity = absl.logging.get_verbosity()
  absl.logging.set_verbosity(absl.logging.ERROR)  # Orbax warns that the item folder has no step metadata
  try:
    tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
  except Exception as e:  # noqa: BLE001 - whatever Orbax says about an unreadable checkpoint
    raise ConfigError(f'config.init_from: cannot read the checkpoint {path} ({str(e).splitlines()[0][:200]})') from None
  finally:
    absl.logging.set_verbosity(verbosity)
  saved = {}
  for part in PARTS:
    if isinstance(tree, dict) and part in tree:
      saved.update({k: tuple(m.shape) for k, m in _named(tree[part], part).items()})
  wanted = {}
  for part in PARTS:
    wanted.update({k: tuple(s.shape) for k, s in _named(getattr(abstract_state, part), part).items()})
  loaded, fresh = [], {}
  for name, shape in wanted.items():
    if any(re.search(p, name) for p in source.skip):
      fresh[name] = 'skipped by config.init_from.skip'
    elif name not in saved:
      fresh[name] = 'not in the source'
    elif saved[name] != shape:
      fresh[name] = f'shape {list(shape)} here, {list(saved[name])} in the source'
    else:
      loaded.append(name)
  if not loaded:
    raise ConfigError(f'config.init_from.workdir={source.workdir!r}: none of this model\'s {len(wanted)} parameter '
                      f'arrays matches the checkpoint at step {step} by path and shape (its model differs entirely)')
  params = [k for k in wanted if k.startswith('params/')]
  for pattern in source.freeze:
    if not any(re.search(pattern, k) for k in params):
      raise ConfigError(f'config.init_from.freeze: {pattern!r} matches no parameter; paths look like {params[0]!r}')
  return Plan(source, step, path, tuple(loaded), fresh)


def load(p: Plan, state):
  """`state` with the planned leaves read from the source checkpoint (cast to this run's dtypes and placed
  with this run's shardings); everything else as it was."""
  import orbax.checkpoint as ocp
  loaded = set(p.loaded)
  target, restore_args = {}, {}
  for part in PARTS:
    leaves = _named(getattr(state, part), part)
    subtree = {}
    for name, x in leaves.items():
      if name in loaded:
        subtree[name] = x
    if subtree:
      target[part], restore_args[part] = _nest(subtree, part, lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=x.sharding)), _nest(subtree, part, lambda x: ocp.ArrayRestoreArgs(
              sharding=x.sharding, global_shape=x.shape, dtype=x.dtype))
  restored = ocp.PyTreeCheckpointer().restore(
      p.path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
  values = {}
  for part in restored:
    values.update(_named(restored[part], part))

  def pick(prefix):
    def one(path, x):
      name = f'{prefix}/{path_name(path)}'
      return values[name] if name in values else x
    return one
  return state.replace(**{part: jax.tree_util.tree_map_with_path(pick(part), getattr(state, part))
                          for part in PARTS})


def _nest(flat: dict, prefix: str, fn) -> dict:
  """{'params/a/b': x} -> {'a': {'b': fn(x)}} (the part's own nesting, for Orbax's partial restore)."""
  out: dict = {}
  for name, x in flat.items():
    keys = name[len(prefix) + 1:].split('/')
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = fn(x)
  return out


def freeze(tx: optax.GradientTransformation, config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`tx` for the trainable parameters, zero updates (and no state) for those config.init_from.freeze names."""
  source = settings(config)
  if source is None or not source.freeze:
    return tx

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: 'frozen' if any(re.search(p, f'params/{path_name(path)}') for p in source.freeze)
        else 'trained', params)
  return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)


def count_frozen(params, config: ml_collections.ConfigDict) -> int:
  source = settings(config)
  if source is None:
    return 0
  return sum(int(np.prod(x.shape)) for name, x in _named(params, 'params').items()
             if any(re.search(p, name) for p in source.freeze))
