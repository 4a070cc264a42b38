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
from maasjax.train import checkpoint as ckpt_lib, transfer
from maasjax.train.prefetch import Prefetcher
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
  privacy: Any = None  # maasjax.privacy.plan.PrivacyPlan when config.privacy.enabled



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
  if config.get('compress') and config.compress.get('method'):  # pruning masks, QAT, a distillation teacher
    from maasjax.compress.hooks import training_hooks
    task, model, tx = training_hooks(config, task, model, tx)
  transfer.settings(config)  # config.init_from's keys, checked here for every command
  tx = transfer.freeze(tx, config)  # config.init_from.freeze: those parameters are never updated
  mesh = parallel.create_mesh(config.mesh)
  multiple = parallel.batch_size_multiple(mesh)
  task_shards_batch = not task.replicate_batch
  for key in ('batch_size', 'eval_batch_size'):
    if task_shards_batch and config[key] % multiple:
      raise ConfigError(f'config.{key}={config[key]} must be a multiple of the {multiple} devices on the batch '
                        f'axes of config.mesh={dict(mesh.shape)}')
  privacy = _privacy_plan(config, dataset, task, multiple)
  steps = compile_steps(model, task, tx, int(config.seed), mesh, sharding.plan(config),
                        privacy=privacy.step_settings() if privacy else None)
  if privacy and jax.tree.leaves(steps.abstract_state.model_state):
    raise ConfigError(f'config.privacy.enabled with model {config.model.name!r}: its BatchNorm statistics mix the '
                      'examples of a batch, so per-example gradients are not private; use a model without '
                      'BatchNorm (e.g. experiments/digits_mlp_dp.py)')
  return Experiment(config, dataset, task, model, tx, mesh, steps, privacy)


def _privacy_plan(config, dataset, task, multiple: int):
  from maasjax.privacy.plan import plan
  if not (config.get('privacy') and config.privacy.get('enabled', False)):
    return None
  if task.replicate_batch or not hasattr(dataset, 'rows_batch'):
    raise ConfigError(f'config.privacy.enabled: DP-SGD samples individual training examples; dataset '
                      f'{dataset.info.name!r} ({dataset.info.task}) is not held as rows in memory')
  return plan(config, len(dataset.split_arrays('train')['labels']), multiple)


def _announce_privacy(plan, num_steps: int) -> None:
  eps = plan.metrics(num_steps)['privacy/epsilon']
  noise = (f'noise multiplier {plan.noise_multiplier:.4g} (calibrated for target epsilon {plan.target_epsilon:g})'
           if plan.target_epsilon > 0 else f'noise multiplier {plan.noise_multiplier:.4g}')
  print(f'DP-SGD: clip {plan.l2_norm_clip:g}, {noise}, sampling rate q={plan.sampling_rate:.4g}; after '
        f'{num_steps} steps epsilon={eps:.3g} at delta={plan.delta:.3g} ({plan.accountant.upper()} accountant)',
        flush=True)
  if plan.sampling == 'poisson':
    print(f'DP-SGD: Poisson batches of {plan.batch_size} expected examples, padded to {plan.max_batch_size} rows; '
          f'a sample larger than that (probability {plan.overflow_probability:.2g} per step) drops its extra '
          f'examples', flush=True)
  else:
    print('DP-SGD: sampling=fixed (shuffled fixed-size batches): epsilon is computed as if batches were '
          'Poisson-sampled, which fixed batches do not satisfy; use sampling=poisson for the stated guarantee',
          flush=True)


def private_batch(exp: Experiment, step: int) -> dict:
  """This process's rows of a DP-SGD batch: a Poisson sample of (seed, step), or the usual fixed batch; both
  carry 'mask' (1 for real rows)."""
  from maasjax.privacy.sampling import poisson_indices
  plan, config = exp.privacy, exp.config
  if plan.sampling == 'poisson':
    indices, mask, _ = poisson_indices(int(config.seed), step, plan.num_examples, plan.sampling_rate,
                                       plan.max_batch_size)
    return exp.dataset.rows_batch(step, indices, mask, jax.process_index(), jax.process_count())
  local = exp.dataset.train_batch(step, config.batch_size, jax.process_index(), jax.process_count())
  return dict(local, mask=np.ones(len(local['labels']), np.float32))


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
  """Process-0 outputs: metrics.jsonl, TensorBoard scalars, a progress bar or plain lines."""

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
    from maasjax.train.scalars import ScalarWriter
    self.writer = ScalarWriter(os.path.join(workdir, 'tensorboard'))
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


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir, or says in one line why it cannot be used."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir {workdir!r} is a file; expected a directory for checkpoints and metrics')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--workdir {workdir!r} cannot be created ({e.strerror}); expected a writable directory '
                      'path') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir {workdir!r} is not writable; expected a directory you can write to')


def _all_finite_fn():
  """A jitted check that every float leaf of a pytree is finite (one scalar back to the host)."""
  def all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.bool_(True)
  return jax.jit(all_finite)


def _read_summary(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, 'summary.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError:
      return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, dataset: Dataset | None = None
                       ) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, writes summary.json.

  `dataset` (a maasjax.data.Dataset) replaces the one `config.dataset` names, e.g. your own data in a notebook.

  Throughput in summary.json: `train_steps_per_second` counts training alone (steps after the first,
  which compiles; evaluation, checkpoint saves and logging excluded), `loop_steps_per_second` the whole
  loop from the first step to the last checkpoint written (what the wall clock of a run shows).
  """
  t0 = time.time()
  exp = setup(config, dataset)  # validates names and settings before anything is written
  # A run starting from scratch may take its parameters from another workdir: checked before writing.
  init_plan = None if transfer.has_checkpoint(workdir) else transfer.plan(config, exp.steps.abstract_state)
  prepare_workdir(workdir)
  ckpt_lib.check_workdir_config(workdir, config)
  is_main = jax.process_index() == 0
  checkpointer = ckpt_lib.Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                                       bool(config.checkpoint.get('async_save', True)))
  state = checkpointer.restore(exp.steps.abstract_state)
  resumed = state is not None
  if state is None:
    state = exp.steps.init()
    if init_plan is not None:
      state = transfer.load(init_plan, state)
      if jax.process_index() == 0:
        print(init_plan.describe(), flush=True)
  start_step = int(jax.device_get(state.step))
  num_steps = int(config.num_train_steps)
  if is_main:
    save_run_files(workdir, exp)
  if start_step >= num_steps:
    previous = _read_summary(workdir)
    kept = previous is not None and previous.get('steps') == start_step
    if is_main:
      print(f'{workdir}: already trained to step {start_step} (config.num_train_steps={num_steps}); '
            f'{"summary.json kept" if kept else "evaluating it"}. Raise --config.num_train_steps to train further.',
            flush=True)
    if kept:
      checkpointer.close()
      return previous
  elif resumed and is_main:
    print(f'{workdir}: resuming from the checkpoint at step {start_step} of {num_steps}', flush=True)
  if exp.privacy and is_main:
    _announce_privacy(exp.privacy, num_steps)
  log = _Log(workdir, config, start_step, active=is_main)
  all_finite = _all_finite_fn()
  pending: list[dict] = []  # device-side metric sums not yet pulled to the host
  loop_start = time.time()
  steady_start, steady_steps, end_time = None, start_step, None
  excluded = 0.0  # seconds since steady_start spent evaluating, logging and checkpointing
  window_start, window_step, window_excluded = loop_start, start_step, 0.0

  def make_batch(step):  # on the prefetch thread, in step order: the stream stays a function of the step
    local = (private_batch(exp, step) if exp.privacy else
             exp.dataset.train_batch(step, config.batch_size, jax.process_index(), jax.process_count()))
    return parallel.global_batch(exp.mesh, local, exp.steps.batch_sharding)

  depth = int(config.get('prefetch_batches', -1))
  if depth < 0:  # auto: overlap host data work with an accelerator's step; on CPU the step needs the cores
    depth = 0 if exp.mesh.devices.flat[0].platform == 'cpu' else 2
  batches = Prefetcher(make_batch, start_step, num_steps, depth=depth)
  try:
    for step in range(start_step, num_steps):
      state, sums = exp.steps.train_step(state, batches.get(step))
      pending.append(sums)
      done = step + 1
      if steady_start is None:
        jax.block_until_ready(sums)  # the first step compiles: throughput figures start after it
        steady_start, steady_steps = time.time(), done
        window_start, window_step, window_excluded = steady_start, done, 0.0
      if done % config.log_every_steps == 0 or done == num_steps:
        host = jax.device_get(pending)  # one sync per log interval, not per step
        totals = {k: sum(float(h[k]) for h in host) for k in host[0]}
        metrics = {f'train/{k}': v for k, v in exp.task.finalize(totals).items()}
        metrics['train/grad_norm'] = float(host[-1]['grad_norm'])
        if exp.privacy:  # the share of examples whose gradient the clip shortened
          metrics['privacy/clipped_fraction'] = totals['clipped'] / max(totals['examples'], 1.0)
        if not all(math.isfinite(v) for v in metrics.values()):
          raise TrainingDiverged(
              f'training diverged at step {done}: {metrics}. The last complete checkpoint '
              f'(step {checkpointer.latest_step()}) is kept; lower config.optimizer.learning_rate or set '
              f'config.optimizer.grad_clip_norm')
        now = time.time()
        if done > window_step:
          metrics['train/steps_per_second'] = (done - window_step) / max(now - window_start - window_excluded, 1e-9)
        window_start, window_step, window_excluded = now, done, 0.0
        pending = []
        if done % config.eval_every_steps == 0 or done == num_steps:
          metrics.update(evaluate_split(exp, state, 'validation', 'eval'))
          if exp.privacy:
            metrics.update(exp.privacy.metrics(done))
        log.write(done, metrics)
        spent = time.time() - now
        excluded, window_excluded = excluded + spent, window_excluded + spent
      log.advance(1)
      if done == num_steps or checkpointer.manager.should_save(done):
        t = time.time()
        # Never write a non-finite state: a run that diverged between log steps stops here instead.
        if not bool(all_finite((state.params, state.model_state, state.opt_state))):
          raise TrainingDiverged(
              f'training diverged before step {done}: the parameters or optimizer state hold NaN or inf, so '
              f'step {done} was not saved. The last complete checkpoint (step {checkpointer.latest_step()}) is '
              f'kept; lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm')
        checkpointer.save(done, state, force=(done == num_steps))
        spent = time.time() - t
        excluded, window_excluded = excluded + spent, window_excluded + spent
    end_time = time.time()
    checkpointer.wait()
    loop_time = time.time() - loop_start
    final_eval = evaluate_split(exp, state, 'validation', 'eval')
    final_test = evaluate_split(exp, state, 'test', 'test')
  finally:
    batches.close()
    log.close()
    checkpointer.close()
  steady = None
  if steady_start is not None and num_steps > steady_steps:
    steady = (num_steps - steady_steps) / max(end_time - steady_start - excluded, 1e-9)
  trained = num_steps - start_step
  summary = {
      **final_eval, **final_test,
      'steps': max(num_steps, start_step),
      'resumed_from_step': start_step,
      'num_params': count_params(state.params),
      'wall_time_s': time.time() - t0,
      'train_steps_per_second': steady,
      'train_examples_per_second': steady * config.batch_size if steady else None,
      'loop_steps_per_second': trained / loop_time if trained > 0 else None,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'mesh': dict(exp.mesh.shape),
  }
  if exp.privacy:
    summary.update(exp.privacy.metrics(summary['steps']))
  if is_main:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
    plot_learning_curves(workdir)
    if exp.privacy:
      from maasjax.privacy.membership import write_report
      write_report(exp, state, workdir, summary)
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
