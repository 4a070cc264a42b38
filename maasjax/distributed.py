"""Multi-host start-up: join the `jax.distributed` cluster when the config or environment says so.

`config.distributed.initialize` is 'auto' (default), 'true' or 'false'. 'auto' joins when a
coordinator or process count is given (config, or MAASJAX_COORDINATOR_ADDRESS /
MAASJAX_NUM_PROCESSES / MAASJAX_PROCESS_ID, or JAX_COORDINATOR_ADDRESS), or when jax can detect the
cluster by itself: a Cloud TPU VM, a Slurm job or an Open MPI launch with more than one task.
Must run before anything touches a device; the loop's `setup` calls it first.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

import jax
import ml_collections

from maasjax.config import ConfigError

MODES = ('auto', 'true', 'false')


def _settings(config: ml_collections.ConfigDict | None) -> dict[str, Any]:
  d = (config.get('distributed') if config is not None else None) or ml_collections.ConfigDict()
  env = os.environ
  mode = str(d.get('initialize', 'auto')).lower()
  if mode not in MODES:
    raise ConfigError(f'config.distributed.initialize={d.get("initialize")!r}: expected one of {", ".join(MODES)}')
  out = {
      'mode': mode,
      'coordinator_address': (d.get('coordinator_address') or env.get('MAASJAX_COORDINATOR_ADDRESS')
                              or env.get('JAX_COORDINATOR_ADDRESS') or None),
      'num_processes': int(d.get('num_processes', 0) or env.get('MAASJAX_NUM_PROCESSES', 0) or 0) or None,
      'process_id': int(d.get('process_id', -1) if d.get('process_id', -1) != -1
                        else env.get('MAASJAX_PROCESS_ID', -1)),
      'timeout_s': int(d.get('timeout_s', 300)),
  }
  if out['process_id'] < 0:
    out['process_id'] = None
  if out['num_processes'] is not None and out['num_processes'] < 1:
    raise ConfigError(f'config.distributed.num_processes={out["num_processes"]}: expected a positive integer')
  if out['process_id'] is not None and out['num_processes'] and out['process_id'] >= out['num_processes']:
    raise ConfigError(f'config.distributed.process_id={out["process_id"]}: expected 0..{out["num_processes"] - 1} '
                      f'(config.distributed.num_processes={out["num_processes"]})')
  return out


def on_cloud_tpu_vm() -> bool:
  """A TPU VM has libtpu installed and TPU chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5+)."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def detected_cluster() -> str | None:
  """The cluster jax's own auto-detection will find with no arguments, if any."""
  env = os.environ
  if on_cloud_tpu_vm():
    return 'Cloud TPU VM'
  if int(env.get('SLURM_NTASKS', env.get('SLURM_NPROCS', '1')) or 1) > 1:
    return 'Slurm'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return 'Open MPI'
  return None


def initialize(config: ml_collections.ConfigDict | None = None) -> bool:
  """Joins the cluster if asked (see module doc); returns whether this process is in a cluster."""
  s = _settings(config)
  if jax.distributed.is_initialized():
    return True
  explicit = any(s[k] is not None for k in ('coordinator_address', 'num_processes', 'process_id'))
  cluster = detected_cluster()
  if s['mode'] == 'false' or (s['mode'] == 'auto' and not explicit and cluster is None):
    return False
  if explicit and cluster is None:
    missing = [k for k in ('coordinator_address', 'num_processes', 'process_id') if s[k] is None]
    if missing:
      raise ConfigError(f'multi-host start needs config.distributed.{missing[0]} (or MAASJAX_{missing[0].upper()}) '
                        f'when no Cloud TPU / Slurm / Open MPI cluster is detected; have '
                        f'{ {k: s[k] for k in ("coordinator_address", "num_processes", "process_id")} }')
  try:
    jax.distributed.initialize(coordinator_address=s['coordinator_address'], num_processes=s['num_processes'],
                               process_id=s['process_id'], initialization_timeout=s['timeout_s'])
  except RuntimeError as e:
    if 'before' in str(e).lower() or 'already' in str(e).lower():
      raise ConfigError('jax.distributed must start before any JAX computation: call '
                        'maasjax.distributed.initialize(config) (or the loop\'s setup) first in the process') from e
    raise
  except ValueError as e:
    raise ConfigError(f'config.distributed: jax.distributed.initialize could not start ({e}); set '
                      f'config.distributed.coordinator_address, num_processes and process_id') from e
  return True
