"""Runs in a subprocess with N simulated CPU devices (JAX_NUM_CPU_DEVICES): trains tiny models on
given meshes and presets, saves/restores checkpoints across meshes, and writes what it saw as JSON.

  JAX_NUM_CPU_DEVICES=8 python tests/mesh_worker.py OUT.json JOBS_JSON

Jobs: {"do": "cases", "cases": [CASE, ...]} trains each case a few steps;
{"do": "save", "case": CASE, "ckpt": DIR, "npz": FILE} trains, checkpoints and dumps the state;
{"do": "restore", "case": CASE, "ckpt": DIR, "npz": FILE} restores onto CASE's mesh and compares.

A case: {"model": "cnn"|"mlp"|"lm", "mesh": {...}, "preset": str, "devices": n (default all),
"dtype": str, "steps": n, "rules": [...]}. Used by tests/test_sharding.py and tests/test_restore_mesh.py.
"""
from __future__ import annotations

import json
import os
import re
import sys

import jax
import ml_collections

jax.config.update('jax_numpy_rank_promotion', 'raise')
# XLA:CPU takes 6-11 s to compile partitionable-threefry random bits for one rank-4 shape (a conv
# kernel's init; measured here), ~0.3 s with the classic counters. Both give the same numbers on
# any mesh, which is all these comparisons need.
jax.config.update('jax_threefry_partitionable', False)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from maasjax import optim, parallel, sharding  # noqa: E402
from maasjax.config import load_config  # noqa: E402
from maasjax.data import load_dataset  # noqa: E402
from maasjax.models import build_model  # noqa: E402
from maasjax.train import checkpoint as ckpt_lib  # noqa: E402
from maasjax.train.loop import model_extra_fields  # noqa: E402
from maasjax.train.steps import compile_steps  # noqa: E402
from maasjax.train.task_table import get_task  # noqa: E402

# Tiny configs per model family: a few steps of each take well under a second on 2 cores.
# The LM is experiments/lm_tpu.py shrunk, on the bundled character text: 8 heads so that a
# 'model' axis of 8 splits them.
TINY = {
    'cnn': ('digits_cnn', {'model.features': (8, 16), 'model.dense': 32, 'model.dropout': 0.1}),
    'mlp': ('digits_mlp', {'model.hidden': (32, 32), 'model.dropout': 0.1}),
    'lm': ('lm_tpu', {'model.num_layers': 1, 'model.num_heads': 8, 'model.emb_dim': 64, 'model.mlp_dim': 128,
                      'model.max_len': 64, 'model.dropout': 0.1, 'model.remat': False,
                      'dataset': {'name': 'char_text', 'seq_len': 32}}),
}


def tiny_config(case: dict):
  name, overrides = TINY[case['model']]
  config = load_config(os.path.join(ROOT, 'experiments', f'{name}.py'))
  settings = {'batch_size': 16, 'eval_batch_size': 16, 'num_train_steps': 20, 'optimizer.warmup_steps': 2,
              'optimizer.learning_rate': 3e-3, 'dtype': case.get('dtype', 'float32'), **overrides}
  for key, value in settings.items():
    node = config
    *parents, last = key.split('.')
    for part in parents:
      node = node[part]
    with node.unlocked():
      node[last] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  with config.unlocked():
    if 'remat' in case:
      config.model.remat = bool(case['remat'])
    config.mesh = dict(case['mesh'])
    config.sharding.preset = case.get('preset', 'replicate')
    config.sharding.rules = tuple(tuple(r) for r in case.get('rules', ()))
  return config


_DATA = {}


def build(case: dict):
  config = tiny_config(case)
  key = case['model']
  if key not in _DATA:
    _DATA[key] = load_dataset(config)
  dataset = _DATA[key]
  task = get_task(dataset.info)
  model = build_model(config, **model_extra_fields(dataset.info))
  tx = optim.make_optimizer(config)
  devices = jax.devices()[:case['devices']] if case.get('devices') else jax.devices()
  mesh = parallel.create_mesh(config.mesh, devices)
  steps = compile_steps(model, task, tx, int(config.seed), mesh, sharding.plan(config))
  return config, dataset, task, steps


def train(config, dataset, task, steps, state, start: int, num: int) -> tuple:
  losses = []
  for step in range(start, start + num):
    local = dataset.train_batch(step, config.batch_size)
    state, sums = steps.train_step(state, parallel.global_batch(steps.mesh, local, steps.batch_sharding))
    losses.append(task.finalize(jax.device_get(sums))['loss'])
  return state, losses


def specs(tree) -> dict[str, list]:
  """Each array's actual PartitionSpec, read from the live arrays (`.sharding`)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {parallel.path_name(p): [list(a) if isinstance(a, tuple) else a for a in leaf.sharding.spec]
          for p, leaf in flat}


def per_device_bytes(tree) -> int:
  return int(sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree)))


def flat_arrays(tree) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {parallel.path_name(p): np.asarray(jax.device_get(leaf)) for p, leaf in flat}


def summary(state) -> dict:
  return {'param_specs': specs(state.params), 'opt_specs': specs(state.opt_state),
          'param_shapes': {k: list(v.shape) for k, v in flat_arrays(state.params).items()},
          'param_dtypes': sorted({str(x.dtype) for x in jax.tree.leaves(state.params)}),
          'opt_dtypes': sorted({str(x.dtype) for x in jax.tree.leaves(state.opt_state)}),
          'param_bytes_per_device': per_device_bytes(state.params),
          'opt_bytes_per_device': per_device_bytes(state.opt_state),
          'num_devices': int(np.prod(list(jax.tree.leaves(state.params)[0].sharding.mesh.shape.values())))}


def matmul_dtypes(steps, state, dataset, config) -> list[str]:
  """Result element types of the train step's matmuls and convolutions, from its lowered program."""
  batch = parallel.global_batch(steps.mesh, dataset.train_batch(0, config.batch_size), steps.batch_sharding)
  text = steps.train_step.lower(state, batch).as_text()
  lines = [line for line in text.splitlines() if 'stablehlo.dot_general' in line or 'stablehlo.convolution' in line]
  return sorted({re.findall(r'tensor<([^>]*)>', line.rsplit('->', 1)[-1])[-1].split('x')[-1] for line in lines})


def run_cases(cases: list[dict]) -> dict:
  out = {}
  for case in cases:
    config, dataset, task, steps = build(case)
    state = steps.init()
    dtypes = matmul_dtypes(steps, state, dataset, config) if case.get('inspect') else None
    state, losses = train(config, dataset, task, steps, state, 0, case.get('steps', 4))
    out[case['name']] = {'losses': losses, 'matmul_dtypes': dtypes, **summary(state)}
  return out


def save(case: dict, ckpt_dir: str, npz: str) -> dict:
  """Trains `steps`, checkpoints, dumps the state's bits, then trains 2 more steps (the reference)."""
  config, dataset, task, steps = build(case)
  n = case.get('steps', 3)
  state, losses = train(config, dataset, task, steps, steps.init(), 0, n)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, every_steps=1, keep=0, async_save=True)
  checkpointer.save(n, state, force=True)
  checkpointer.close()
  np.savez(npz, **{'params/' + k: v for k, v in flat_arrays(state.params).items()},
           **{'opt/' + k: v for k, v in flat_arrays(state.opt_state).items()})
  info = summary(state)
  state, more = train(config, dataset, task, steps, state, n, 2)
  return {'losses': losses, 'continued_losses': more, **info}


def restore(case: dict, ckpt_dir: str, npz: str) -> dict:
  """Restores onto this process's mesh; compares bits with the saver's dump; trains 2 more steps."""
  config, dataset, task, steps = build(case)
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, every_steps=1, keep=0, async_save=False)
  state = checkpointer.restore(steps.abstract_state)
  checkpointer.close()
  saved = np.load(npz)
  mine = {**{'params/' + k: v for k, v in flat_arrays(state.params).items()},
          **{'opt/' + k: v for k, v in flat_arrays(state.opt_state).items()}}
  mismatched = sorted(k for k in saved.files if k not in mine or saved[k].tobytes() != mine[k].tobytes())
  step = int(jax.device_get(state.step))
  info = summary(state)
  state, more = train(config, dataset, task, steps, state, step, 2)
  return {'step': step, 'compared': len(saved.files), 'mismatched': mismatched, 'continued_losses': more, **info}


def main(argv: list[str]) -> None:
  out_path, jobs = argv[0], json.loads(argv[1])
  results = []
  for job in jobs:
    if job['do'] == 'cases':
      results.append(run_cases(job['cases']))
    elif job['do'] == 'save':
      results.append(save(job['case'], job['ckpt'], job['npz']))
    elif job['do'] == 'restore':
      results.append(restore(job['case'], job['ckpt'], job['npz']))
    else:
      raise SystemExit(f'unknown job {job["do"]!r}')
  with open(out_path, 'w') as f:
    json.dump({'device_count': jax.device_count(), 'results': results}, f)


if __name__ == '__main__':
  main(sys.argv[1:])
