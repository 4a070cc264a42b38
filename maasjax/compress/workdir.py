"""A trained workdir -> a compressed workdir that `maasjax eval`, `export` and `serve` take unchanged.

The new workdir's config.json describes the compressed model (smaller `model.*`, `model.quantization`, the
`compress` settings in force), its checkpoints/ start at step 0 with the transformed parameters and the
fine-tune (the ordinary training loop) continues from there; summary.json gains a `compression` block beside
the usual metrics, measured against the source (the baseline) in the same process.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from maasjax.compress import measure, settings as cs
from maasjax.config import ConfigError, apply_override, load_workdir_config


STAGE = 'qat'  # OUT/qat: the quantization-aware fine-tune's own workdir
# Each method's module has `transform(experiment, state, config) -> Transformed` (maasjax.compress.transform).
TRANSFORMS = {method: f'maasjax.compress.{module}' for method, module in (
    ('prune', 'pruning'), ('channels', 'channels'), ('quantize', 'quantize'), ('distill', 'distill'),
    ('cut', 'cut'), ('fold', 'fold'))}


def check_out(out: str, source: str) -> None:
  if os.path.abspath(out) == os.path.abspath(source):
    raise ConfigError(f'--out {out!r} is the source workdir; choose a new folder for the compressed model')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f'--out {out!r} already exists and is not empty; choose a new folder (nothing was written)')


def start_workdir(config: ml_collections.ConfigDict, out: str, params, model_state):
  """Writes config.json and a step-0 checkpoint of (params, model_state, a fresh optimizer state); returns
  (experiment, state)."""
  from maasjax.train import checkpoint as ckpt_lib
  from maasjax.train.loop import prepare_workdir, save_run_files, setup
  from maasjax.train.state import TrainState
  exp = setup(config)
  abstract = exp.steps.abstract_state
  want = jax.tree.map(lambda s: (tuple(s.shape), str(s.dtype)), (abstract.params, abstract.model_state))
  have = jax.tree.map(lambda x: (tuple(jnp.shape(x)), str(jnp.asarray(x).dtype)), (params, model_state))
  if jax.tree.structure(want) != jax.tree.structure(have) or want != have:
    raise RuntimeError(f'the compressed parameters do not fit the compressed config\'s model:\n{want}\n{have}')
  opt_state = jax.jit(exp.tx.init)(params)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state, opt_state=opt_state)
  state = jax.device_put(state, exp.steps.shardings)
  prepare_workdir(out)
  save_run_files(out, exp)
  checkpointer = ckpt_lib.Checkpointer(out, config.checkpoint.every_steps, config.checkpoint.keep, async_save=False)
  try:
    checkpointer.save(0, state, force=True)
  finally:
    checkpointer.close()
  return exp, state


def evaluate_without_training(exp, state, out: str, t0: float) -> dict[str, Any]:
  from maasjax.train.loop import evaluate_split
  from maasjax.train.state import count_params
  summary = {**evaluate_split(exp, state, 'validation', 'eval'), **evaluate_split(exp, state, 'test', 'test'),
             'steps': 0, 'resumed_from_step': 0, 'num_params': count_params(state.params),
             'wall_time_s': time.time() - t0, 'train_steps_per_second': None, 'train_examples_per_second': None,
             'loop_steps_per_second': None, 'devices': jax.device_count(), 'platform': jax.devices()[0].platform,
             'mesh': dict(exp.mesh.shape)}
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def train_from(config, out: str, params, model_state, steps: int, t0: float) -> dict[str, Any]:
  """Starts `out` from the given parameters (or the loop's own init when None) and trains `steps` steps."""
  from maasjax.train.loop import train_and_evaluate
  if params is None:
    return train_and_evaluate(config, out)
  exp, state = start_workdir(config, out, params, model_state)
  if steps == 0:
    return evaluate_without_training(exp, state, out, t0)
  return train_and_evaluate(config, out)


def settings_record(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
  """The compress settings that apply to `method` (what the summary reports)."""
  keys = {'prune': ('sparsity', 'pattern', 'distribution', 'schedule', 'start_step', 'end_step', 'update_every',
                    'overrides'),
          'channels': ('fraction', 'overrides'), 'quantize': ('mode', 'calibration_batches'),
          'distill': ('teacher', 'student', 'temperature', 'alpha'), 'cut': ('layers',), 'fold': ()}[method]
  section = cs.compress_section(config).to_dict()
  record = {k: section[k] for k in keys}
  if int(config.num_train_steps) > 0:
    record.update(fine_tune_steps=int(config.num_train_steps), learning_rate=float(config.optimizer.learning_rate))
  return record


def compress_workdir(source: str, out: str, method: str, overrides=(), measure_latency: bool = True,
                     verbose: bool = True) -> dict[str, Any]:
  """Compresses the trained `source` workdir with `method` into `out`; returns out's summary.json."""
  from maasjax.train.loop import restore_latest
  t0 = time.time()
  if method not in cs.METHODS:
    raise ConfigError(f'--method {method!r}: expected one of {", ".join(cs.METHODS)}')
  source_config = load_workdir_config(source)
  config = cs.with_compress_section(source_config)
  for key, value in overrides:
    apply_override(config, key, value)
  with config.unlocked():
    config.compress.method = method
    if method == 'distill':
      config.compress.teacher = os.path.abspath(source)
  check_out(out, source)
  exp, state, step = restore_latest(source_config, source)
  result = importlib.import_module(TRANSFORMS[method]).transform(exp, state, config)
  log = print if verbose else (lambda *a, **k: None)
  log(f'compress {method}: {source} (step {step}) -> {out}', flush=True)
  params, model_state = state.params, state.model_state
  if result.stage_config is not None:  # a float fine-tune (QAT) in a sub-workdir, then the conversion
    stage_dir = os.path.join(out, STAGE)
    train_from(result.stage_config, stage_dir, params, model_state, int(result.stage_config.num_train_steps), t0)
    _, stage_state, _ = restore_latest(result.stage_config, stage_dir)
    params, model_state = stage_state.params, stage_state.model_state
    result.facts.update(fine_tune_steps=int(result.stage_config.num_train_steps), fine_tune_workdir=STAGE)
  if result.convert is not None:
    result.params, result.model_state = result.convert(params, model_state)
  summary = train_from(result.config, out, result.params, result.model_state, result.steps, t0)
  new_exp, new_state, _ = restore_latest(result.config, out)
  block = {'method': method, 'settings': settings_record(result.config, method), **result.facts,
           'source': os.path.abspath(source), 'source_step': step,
           **measure.size_figures(new_state.params, new_state.model_state)}
  baseline = {**measure.size_figures(state.params, state.model_state)}
  if measure_latency:
    new_ms, base_ms = measure.latencies_ms([measure.serving_call(new_exp, new_state), measure.serving_call(exp, state)])
    block['latency_ms'], baseline['latency_ms'] = new_ms, base_ms
  source_summary = _read_json(os.path.join(source, 'summary.json'))
  baseline.update({k: v for k, v in source_summary.items() if k.startswith(('test/', 'eval/'))})
  if 'compression' in source_summary:  # compressed twice (e.g. prune, then quantize): the chain is kept
    baseline['compression'] = source_summary['compression']
  block['baseline'] = baseline
  summary['compression'] = block
  summary['wall_time_s'] = time.time() - t0
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
