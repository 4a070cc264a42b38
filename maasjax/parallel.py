"""Device mesh from config, parameter placement, and host-local batch -> global array.

`config.mesh` maps axis names to sizes, e.g. {'data': -1} or {'data': 2, 'fsdp': 2, 'model': 2};
-1 takes the rest of the devices. The batch is sharded over every batch-like axis ('data' and
'fsdp'); parameters follow `config.sharding.rules` (regex over 'a/b/kernel' paths -> axes per dim),
replicated when no rule matches.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maasjax.config import ConfigError

BATCH_AXES = ('data', 'fsdp')


def apply_cpu_dispatch(config: ml_collections.ConfigDict) -> None:
  """Sets JAX's CPU dispatch from `config.cpu_async_dispatch` (see maasjax/defaults.py).

  JAX reads it when it starts its CPU backend, so this must run before anything touches a device; when the
  backend has already started (a notebook that ran JAX before), it says so once and changes nothing.
  """
  wanted = bool(config.get('cpu_async_dispatch', True))
  if jax.config.values['jax_cpu_enable_async_dispatch'] == wanted:
    return
  from jax._src import xla_bridge  # no public way to ask whether the backends have started
  if xla_bridge.backends_are_initialized():
    print(f'maasjax: config.cpu_async_dispatch={wanted} takes effect in a fresh process only (JAX\'s CPU '
          f'backend has started); the steps keep jax_cpu_enable_async_dispatch='
          f'{jax.config.values["jax_cpu_enable_async_dispatch"]}', flush=True)
    return
  jax.config.update('jax_cpu_enable_async_dispatch', wanted)


def mesh_shape(mesh_config: dict[str, int], num_devices: int) -> dict[str, int]:
  sizes = {str(k): int(v) for k, v in mesh_config.items()}
  if not sizes:
    raise ConfigError('config.mesh is empty; expected axis sizes such as {"data": -1}')
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ConfigError(f'config.mesh={sizes}: at most one axis may be -1 (the rest of the devices)')
  bad = [k for k, v in sizes.items() if v == 0 or v < -1]
  if bad:
    raise ConfigError(f'config.mesh.{bad[0]}={sizes[bad[0]]}: expected a positive size or -1')
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if num_devices % fixed:
      raise ConfigError(f'config.mesh={sizes}: the fixed axes ({fixed} devices) do not divide the '
                        f'{num_devices} available devices')
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f'config.mesh={sizes} needs {math.prod(sizes.values())} devices but {num_devices} '
                      f'are available; use -1 on one axis to take the rest')
  return sizes


def create_mesh(mesh_config: dict[str, int] | ml_collections.ConfigDict,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  if isinstance(mesh_config, ml_collections.ConfigDict):
    mesh_config = mesh_config.to_dict()
  sizes = mesh_shape(mesh_config, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(sizes)
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes), axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(tuple(sizes.values())), tuple(sizes), axis_types=axis_types)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_size_multiple(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  axes = batch_axes(mesh)
  return NamedSharding(mesh, P(axes if axes else None))


def global_batch(mesh: Mesh, local_batch: Any, sharding: NamedSharding | None = None) -> Any:
  """Host-local numpy batch (this process's rows) -> global jax arrays sharded over the batch axes.

  With a replicated `sharding` every process passes the whole batch.
  """
  sharding = sharding or batch_sharding(mesh)
  if jax.process_count() == 1:  # the local rows are the global batch: one transfer call for the tree (~30 us
    return jax.device_put(local_batch, sharding)  # less per step than assembling it from process-local data)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def path_name(path) -> str:
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _spec_for(name: str, shape: tuple[int, ...], rules: Sequence[tuple[str, Sequence[Any]]],
              mesh: Mesh) -> P:
  for pattern, axes in rules:
    if re.search(pattern, name):
      axes = tuple(None if a in (None, '', 'none') else a for a in axes)
      if len(axes) > len(shape):
        raise ConfigError(f'sharding rule {pattern!r} -> {axes} has {len(axes)} axes but parameter {name!r} '
                          f'has shape {shape}')
      axes = axes + (None,) * (len(shape) - len(axes))
      for dim, axis in zip(shape, axes):
        if axis is None:
          continue
        names = axis if isinstance(axis, tuple) else (axis,)
        missing = [a for a in names if a not in mesh.shape]
        if missing:
          raise ConfigError(f'sharding rule {pattern!r} names mesh axis {missing[0]!r}, which config.mesh lacks '
                            f'(axes: {", ".join(mesh.axis_names)}); parameter {name!r}')
        size = math.prod(mesh.shape[a] for a in names)
        if dim % size:
          raise ConfigError(f'sharding rule {pattern!r} splits parameter {name!r} (shape {shape}) over '
                            f'{axis!r} of size {size}, which does not divide {dim}')
      return P(*axes)
  return P()


def param_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[Any]]] = ()) -> Any:
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) from the regex rules."""
  def one(path, leaf):
    shape = tuple(getattr(leaf, 'shape', ()))
    return NamedSharding(mesh, _spec_for(path_name(path), shape, rules, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def sharding_rules(config: ml_collections.ConfigDict) -> list[tuple[str, tuple]]:
  sharding = config.get('sharding')
  if sharding is None:
    return []
  rules = sharding.get('rules', ()) or ()
  out = []
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ConfigError(f'config.sharding.rules[{i}]={rule!r}: expected (regex, (axis_or_None, ...))')
    out.append((rule[0], tuple(rule[1])))
  return out
