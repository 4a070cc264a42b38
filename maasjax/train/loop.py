"""The training loop: setup from config, train with periodic eval and checkpoints, final test.

`train_and_evaluate(config, workdir)` is importable (notebooks, tests, sweeps); the CLI is a thin
wrapper. Only process 0 writes logs, metrics and summaries; every process checkpoints.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maasjax import distributed, optim, parallel, sharding
from maasjax.config import ConfigError, require
from maasjax.data import Dataset, load_dataset
from maasjax.models import build_model
from maasjax.train import checkpoint as ckpt_lib
from maasjax.train.state import TrainState, count_params
from maasjax.train.steps import CompiledSteps, compile_steps
from maasjax.train.task_table import get_task
from maasjax.train.tasks import Task


class TrainingDiverged(RuntimeError):
  """The loss became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class Experiment:
  """Everything built from a config, shared by train, eval, export and serve."""
  config: ml_collections.ConfigDict
  dataset: Dataset
  task: Task
  model: Any
  tx: Any
  mesh: Any
  steps: CompiledSteps


def validate(config: ml_collections.ConfigDict) -> None:
  positive = lambda v: v > 0
  require(config, 'seed', int)
  require(config, 'batch_size', int, positive, 'a positive integer')
  require(config, 'num_train_steps', int, lambda v: v >= 0, 'an integer >= 0')
  for key in ('eval_batch_size', 'log_every_steps', 'eval_every_steps'):
    require(config, key, int, positive, 'a positive integer')
  require(config, 'checkpoint.every_steps', int, positive, 'a positive integer')
  require(config, 'checkpoint.keep', int, lambda v: v >= 0, 'an integer >= 0 (0 keeps all)')
  require(config, 'model.name', str)
  require(config, 'dataset.name', str)
  require(config, 'optimizer.name', str)
  require(config, 'dtype', str, lambda v: v in ('float32', 'bfloat16', 'float16'), 'float32, bfloat16 or float16')


def model_extra_fields(info) -> dict[str, Any]:
  """Dataset-derived model settings (e.g. the number of classes)."""
  extra = {'num_classes': info.num_classes}
  extra.update(info.extra.get('model_fields', {}))
  return extra


def setup(config: ml_collections.ConfigDict, dataset: Dataset | None = None) -> Experiment:
  validate(config)
  distributed.initialize(config)  # multi-host: before anything touches a device
  dataset = dataset or load_dataset(config)
  task = get_task(dataset.info)
  model = build_model(config, **model_extra_fields(dataset.info))
  tx = optim.make_optimizer(config)
  mesh = parallel.create_mesh(config.mesh)
  multiple = parallel.batch_size_multiple(mesh) * 1
  task_shards_batch = not task.replicate_batch
  for key in ('batch_size', 'eval_batch_size'):
    if task_shards_batch and config[key] % multiple:
      raise ConfigError(f'config.{key}={config[key]} must be a multiple of the {multiple} devices on the batch '
                        f'axes of config.mesh={dict(mesh.shape)}')
  steps = compile_steps(model, task, tx, int(config.seed), mesh, sharding.plan(config))
  return Experiment(config, dataset, task, model, tx, mesh, steps)


def evaluate_split(exp: Experiment, state: TrainState, split: str, prefix: str | None = None) -> dict[str, float]:
  """Exact metrics of `state` on a whole split (padded batches are masked out)."""
  totals, examples = None, []
  for local in exp.dataset.eval_batches(split, exp.config.eval_batch_size, jax.process_index(), jax.process_count()):
    sums = dict(exp.steps.eval_step(state, parallel.global_batch(exp.mesh, local, exp.steps.batch_sharding)))
    if 'examples' in sums:  # per-example outputs for metrics that are not sums (e.g. mean average precision)
      examples.append(jax.device_get(sums.pop('examples')))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ConfigError(f'split {split!r} of dataset {exp.dataset.info.name!r} is empty')
  gathered = jax.tree.map(lambda *xs: np.concatenate(xs), *examples) if examples else None
  metrics = exp.task.finalize(jax.device_get(totals), gathered)
  prefix = prefix or split
  return {f'{prefix}/{k}': v for k, v in metrics.items()}


class _Log:
  """Process-0 outputs: metrics.jsonl, TensorBoard (clu), a progress bar or plain lines."""

  def __init__(self, workdir: str, config, start_step: int, active: bool):
    self.active = active
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = None
    self.bar = None
    if not active:
      return
    # Rows from steps after the restored checkpoint will be recomputed identically: drop them.
    if os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= start_step]
      with open(self.path, 'w') as f:
        f.writelines(rows)
    from clu import metric_writers
    self.writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'), asynchronous=True)
    self.writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()
                               if isinstance(v, (int, float, str, bool))})
    interactive = bool(config.get('progress_bar', True)) and sys.stderr.isatty()
    if interactive:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=int(config.num_train_steps), initial=start_step, unit='step', dynamic_ncols=True,
                      desc=f'{config.model.name}/{config.dataset.name}')

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, **metrics}) + '\n')
    self.writer.write_scalars(step, metrics)
    shown = {k.split('/', 1)[-1] if k.startswith('train/') else k: f'{v:.4g}' for k, v in metrics.items()
             if k.split('/', 1)[-1] in ('loss', 'accuracy', 'exact_match', 'perplexity', 'mean_average_precision')
             or k == 'train/steps_per_second'}
    if self.bar is not None:
      self.bar.set_postfix(shown, refresh=False)
    else:
      print(f'step {step}: ' + ', '.join(f'{k}={v}' for k, v in shown.items()), flush=True)

  def advance(self, n: int) -> None:
    if self.bar is not None:
      self.bar.update(n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def plot_learning_curves(workdir: str) -> str | None:
  """Train/eval loss and accuracy against step, from metrics.jsonl, to learning_curves.png."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  names = sorted({k.split('/', 1)[1] for r in rows for k in r if '/' in k and k.split('/')[0] in ('train', 'eval')}
                 & {'loss', 'accuracy', 'exact_match', 'mean_average_precision', 'perplexity'})
  if not names:
    return None
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    for split, style in (('train', '-'), ('eval', 'o-')):
      pts = [(r['step'], r[f'{split}/{name}']) for r in rows if f'{split}/{name}' in r]
      if pts:
        ax.plot(*zip(*pts), style, label='validation' if split == 'eval' else 'train', markersize=3)
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    if name == 'loss':
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  out = os.path.join(workdir, 'learning_curves.png')
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def save_run_files(workdir: str, exp: Experiment) -> None:
  with open(ckpt_lib.config_path(workdir), 'w') as f:
    f.write(exp.config.to_json_best_effort(indent=2, sort_keys=True))
  with open(os.path.join(workdir, 'dataset_info.json'), 'w') as f:
    json.dump(exp.dataset.info.to_dict(), f, indent=2)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, writes summary.json."""
  t0 = time.time()
  exp = setup(config)  # validates names and settings before anything is written
  os.makedirs(workdir, exist_ok=True)
  ckpt_lib.check_workdir_config(workdir, config)
  is_main = jax.process_index() == 0
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                                       bool(config.checkpoint.get('async_save', True)))
  state = checkpointer.restore(exp.steps.abstract_state)
  if state is None:
    state = exp.steps.init()
  start_step = int(jax.device_get(state.step))
  if is_main:
    save_run_files(workdir, exp)
  num_steps = int(config.num_train_steps)
  log = _Log(workdir, config, start_step, active=is_main)
  pending: list[dict] = []  # device-side metric sums not yet pulled to the host
  window_start, window_step = time.time(), start_step
  steady_start, steady_steps = None, 0
  try:
    for step in range(start_step, num_steps):
      local = exp.dataset.train_batch(step, config.batch_size, jax.process_index(), jax.process_count())
      state, sums = exp.steps.train_step(state, parallel.global_batch(exp.mesh, local, exp.steps.batch_sharding))
      pending.append(sums)
      done = step + 1
      if steady_start is None and done - start_step == 1:
        jax.block_until_ready(sums)  # exclude compilation from the throughput figure
        steady_start, steady_steps = time.time(), done
      if done % config.log_every_steps == 0 or done == num_steps:
        host = jax.device_get(pending)  # one sync per log interval, not per step
        totals = {k: sum(float(h[k]) for h in host) for k in host[0]}
        metrics = {f'train/{k}': v for k, v in exp.task.finalize(totals).items()}
        metrics['train/grad_norm'] = float(host[-1]['grad_norm'])
        if not all(math.isfinite(v) for v in metrics.values()):
          raise TrainingDiverged(
              f'training diverged at step {done}: {metrics}. The last complete checkpoint '
              f'(step {checkpointer.latest_step()}) is kept; lower config.optimizer.learning_rate or set '
              f'config.optimizer.grad_clip_norm')
        now = time.time()
        metrics['train/steps_per_second'] = (done - window_step) / max(now - window_start, 1e-9)
        window_start, window_step = now, done
        pending = []
        if done % config.eval_every_steps == 0 or done == num_steps:
          metrics.update(evaluate_split(exp, state, 'validation', 'eval'))
        log.write(done, metrics)
      log.advance(1)
      checkpointer.save(done, state, force=(done == num_steps))
    checkpointer.wait()
    steady = None
    if steady_start is not None and num_steps > steady_steps:
      steady = (num_steps - steady_steps) / max(time.time() - steady_start, 1e-9)
    final_eval = evaluate_split(exp, state, 'validation', 'eval')
    final_test = evaluate_split(exp, state, 'test', 'test')
  finally:
    log.close()
    checkpointer.close()
  summary = {
      **final_eval, **final_test,
      'steps': num_steps,
      'resumed_from_step': start_step,
      'num_params': count_params(state.params),
      'wall_time_s': time.time() - t0,
      'train_steps_per_second': steady,
      'train_examples_per_second': steady * config.batch_size if steady else None,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'mesh': dict(exp.mesh.shape),
  }
  if is_main:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    plot_learning_curves(workdir)
  return summary


def restore_latest(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                   ) -> tuple[Experiment, TrainState, int]:
  """The experiment and its state at the workdir's latest (or given) checkpoint."""
  exp = setup(config)
  ckpt_lib.check_workdir_config(workdir, config)
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep, False,
                                       read_only=True)
  try:
    state = checkpointer.restore(exp.steps.abstract_state, step)
  finally:
    checkpointer.close()
  if state is None:
    raise ConfigError(f'workdir {workdir!r} has no checkpoint to evaluate; train first with '
                      f'maasjax train --config ... --workdir {workdir}')
  return exp, state, int(jax.device_get(state.step))


def split_prefix(split: str) -> str:
  """The metric prefix of a split, as in summary.json and metrics.jsonl: validation is 'eval/'."""
  return 'eval' if split == 'validation' else split


def evaluate(config: ml_collections.ConfigDict, workdir: str, split: str = 'all') -> dict[str, float]:
  """Evaluates the latest checkpoint on `split` ('all': validation and test, named as in summary.json);
  writes <workdir>/eval_<split>.json."""
  exp, state, step = restore_latest(config, workdir)
  known = exp.dataset.splits()
  splits = [s for s in ('validation', 'test') if s in known] if split == 'all' else [split]
  if split != 'all' and split not in known:
    raise ConfigError(f'split {split!r} is not in dataset {exp.dataset.info.name!r}; '
                      f'known splits: {", ".join(known)} (or all)')
  metrics = {'step': step}
  for name in splits:
    metrics.update(evaluate_split(exp, state, name, split_prefix(name)))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
      json.dump(metrics, f, indent=2)
  return metrics
