"""Orbax checkpoints of the train state: periodic, async, keep-K, restore onto any mesh.

Orbax writes each step into a temporary directory and renames it only once complete, so a
checkpoint cut short by a kill is never listed, and the previous complete one is restored.
The state is saved as a plain nested dict (`flax.serialization.to_state_dict`) and restored
into a target whose leaves carry the *current* shardings, so a checkpoint moves between meshes.
"""
from __future__ import annotations

import json
import os

import flax
import ml_collections
import orbax.checkpoint as ocp

from maasjax.config import ConfigError

# What a resume (or eval/export of a workdir) must not change: the shapes in the train state and the
# data order. Everything else may change between runs of one workdir (a dropout rate, the learning rate
# schedule, the eval batch size, where the data lives).
STRUCTURAL_KEYS = (
    'seed',  # parameter init, data order and dropout keys all derive from it
    'batch_size',  # batch `s` holds examples s*B .. s*B+B-1 of the seeded stream
    'model',  # every model setting changes shapes, except those in FREE_KEYS
    'dataset',  # the name, splits, sequence length, ... decide shapes and order, except FREE_KEYS
    'optimizer.name',  # the optimizer state's structure
    'optimizer.grad_accum_steps',  # optax.MultiSteps adds its own state
)
# DP-SGD: turning it on or off changes the data order (each batch becomes a Poisson sample). While it is on,
# the epsilon reported composes every step at one sampling scheme, clip and noise level, so those may not
# change mid-run either; with target_epsilon the noise is calibrated for num_train_steps, so that is fixed too.
# With DP off, the privacy keys are unused and free.
PRIVATE_KEYS = ('privacy.sampling', 'privacy.l2_norm_clip', 'privacy.noise_multiplier', 'privacy.target_epsilon')
FREE_KEYS = {
    'model': ('dropout', 'attention_dropout', 'remat', 'dtype'),  # no parameter changes shape
    'dataset': ('data_dir', 'download', 'eval_examples', 'normalize', 'augment'),  # same examples, same order
}


def _get(config: dict, dotted: str):
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def structural_diff(saved: dict, current: dict) -> list[str]:
  diffs = []
  for key in STRUCTURAL_KEYS:
    a, b = _get(saved, key), _get(current, key)
    if isinstance(a, dict) and isinstance(b, dict):
      for sub in sorted(set(a) | set(b)):
        if sub in FREE_KEYS.get(key, ()):
          continue
        if json.dumps(a.get(sub), sort_keys=True) != json.dumps(b.get(sub), sort_keys=True):
          diffs.append(f'{key}.{sub}: checkpoint has {a.get(sub)!r}, config has {b.get(sub)!r}')
    elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
      diffs.append(f'{key}: checkpoint has {a!r}, config has {b!r}')
  private = [bool(_get(c, 'privacy.enabled')) for c in (saved, current)]  # a config from before DP: off
  if private[0] != private[1]:
    diffs.append(f'privacy.enabled: checkpoint has {private[0]!r}, config has {private[1]!r}')
  elif private[0]:
    calibrated = float(_get(current, 'privacy.target_epsilon') or 0) > 0
    for key in PRIVATE_KEYS + (('num_train_steps',) if calibrated else ()):
      a, b = _get(saved, key), _get(current, key)
      if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        diffs.append(f'{key}: checkpoint has {a!r}, config has {b!r} (the run is differentially private)')
  return diffs


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose recorded config would not fit this one's state."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = json.loads(config.to_json_best_effort())
  diffs = structural_diff(saved, current)
  if diffs:
    raise ConfigError(f'workdir {workdir!r} holds checkpoints from an incompatible config:\n  ' +
                      '\n  '.join(diffs) + '\nuse a new --workdir, or the config that trained it')


class Checkpointer:
  def __init__(self, workdir: str, every_steps: int, keep: int, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if read_only and not os.path.isdir(self.directory):
      raise ConfigError(f'workdir {workdir!r} has no checkpoint to evaluate; train first with '
                        f'maasjax train --config ... --workdir {workdir}')
    if read_only:  # restore only; never saves, so nothing is deleted (Orbax's read_only mode logs warnings)
      options = ocp.CheckpointManagerOptions(max_to_keep=None, create=False, enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(
          save_interval_steps=max(1, every_steps), max_to_keep=keep if keep > 0 else None,
          enable_async_checkpointing=async_save, create=True)
    self.read_only = read_only
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, force: bool = False) -> bool:
    assert not self.read_only, 'a read-only Checkpointer saves nothing'
    return self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                             force=force)

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: latest complete) into the structure and shardings of `abstract_state`."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return None
    saved_steps = self.manager.all_steps()
    if step not in saved_steps:
      saved = ', '.join(map(str, sorted(saved_steps))) or 'none'
      raise ConfigError(f'step {step} is not a checkpoint in {self.directory}; its saved steps: {saved}')
    target = flax.serialization.to_state_dict(abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f'checkpoint {self.directory}/{step} does not fit this config\'s model and optimizer '
                        f'({str(e).splitlines()[0][:300]}); use a new --workdir, or the config that trained it') from e
    return flax.serialization.from_state_dict(abstract_state, restored)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
