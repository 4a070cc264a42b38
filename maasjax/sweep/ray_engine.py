"""Runs a sweep's trials as Ray Tune trials, on a local Ray instance or an existing cluster (`--ray-address`).

Only the scheduling differs from the local engine (runner.py): the same trial names and folders, each trial the
same `maasjax train` process with its train.log, finished trials (summary.json) skipped before Ray starts, and
the same results tables. A Tune trial holds the resources given on the command line (`{"TPU": 4}`: Ray sets
TPU_VISIBLE_CHIPS, so one process holds the chips) while its `maasjax train` child runs; actors are not reused.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
from typing import Any

from maasjax.config import ConfigError
from maasjax.sweep import runner

Trial = dict[str, Any]


def parse_resources(text: str) -> dict[str, float]:
  """'{"cpu": 1}' or '{"TPU": 4}' -> the per-trial resource dict Tune reserves (names as Ray spells them)."""
  try:
    resources = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f'--resources {text!r} is not JSON ({e.msg}); expected e.g. \'{{"cpu": 1}}\' or '
                      '\'{"TPU": 4}\'') from None
  if not isinstance(resources, dict) or not resources:
    raise ConfigError(f'--resources {text!r}: expected a JSON object of resource name -> amount, e.g. '
                      '\'{"cpu": 1}\' or \'{"TPU": 4}\'')
  for name, amount in resources.items():
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount <= 0:
      raise ConfigError(f'--resources {text!r}: {name!r} is {amount!r}; expected a positive number')
  return resources


def _check_fits(resources: dict[str, float], cluster: dict[str, float], autoscaling: bool) -> None:
  """Tune waits for resources forever: a trial this Ray instance can never hold is an error, not a hang (on a
  cluster, whose autoscaler may add nodes, only a line saying what is missing)."""
  missing = {name: amount for name, amount in resources.items()
             if cluster.get({'cpu': 'CPU', 'gpu': 'GPU'}.get(name, name), 0) < amount}
  if not missing:
    return
  have = ', '.join(f'{k}: {v:g}' for k, v in sorted(cluster.items())
                  if k != 'memory' and not k.startswith(('node:', 'object_store')))
  text = f'a trial asks for {json.dumps(missing)} and Ray has {{{have}}}'
  if not autoscaling:
    raise ConfigError(f'--resources {json.dumps(resources)}: {text} (locally Ray has --parallel CPUs)')
  print(f'sweep: {text} now; trials wait until the cluster has it', flush=True)


def require_ray() -> None:
  try:
    import ray  # noqa: F401
    from ray import tune  # noqa: F401
  except ImportError:
    raise ConfigError("--engine ray needs Ray Tune: pip install 'maasjax[ray]'") from None


def _final_metrics(trial_dir: str) -> dict[str, float]:
  with open(os.path.join(trial_dir, 'summary.json')) as f:
    summary = json.load(f)
  return {k: v for k, v in summary.items()
          if k.startswith(('test/', 'eval/')) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trainable(base: str, base_rel: str, workdir: str, trials: dict[str, Trial]):
  """The Tune function trainable: one trial = one `maasjax train` process in DIR/<name>/, then its final metrics."""

  def train_trial(config: dict[str, Any]) -> None:
    from ray import tune
    name = config['trial']
    trial_dir = os.path.join(workdir, name)
    code = 0
    if not runner.is_finished(trial_dir):  # e.g. Ray restarting a trial whose process had already finished
      # On a cluster the driver's absolute path may not exist on this node (ray job submit --working-dir):
      # the config is then where the job's working directory put it, relative as the driver saw it.
      path = base if os.path.isfile(base) else os.path.join(os.environ.get('TUNE_ORIG_WORKING_DIR', ''), base_rel)
      with runner.open_log(trial_dir) as log:
        code = subprocess.run(runner.command(path, trial_dir, trials[name]), stdout=log,
                              stderr=subprocess.STDOUT).returncode
    # A trainer that refused its config or crashed is not a Tune error (no traceback, not retried): its
    # train.log says why, and the driver lists it as the local engine does.
    finished = code == 0 and runner.is_finished(trial_dir)
    tune.report({'exit_code': code, **(_final_metrics(trial_dir) if finished else {})})

  return train_trial


def _progress_callback():
  from ray import tune

  class Progress(tune.Callback):
    """One line per trial start and end, as the local engine prints (Ray's own output is off)."""

    def on_trial_start(self, iteration, trials, trial, **info):
      print(f'sweep: started {trial.config["trial"]} (Ray Tune trial {trial.trial_id})', flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
      code = (trial.last_result or {}).get('exit_code')
      print(f'sweep: finished {trial.config["trial"]}' if code == 0 else
            f'sweep: FAILED {trial.config["trial"]} (exit code {code})', flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):  # Ray's failure: a lost node or worker
      print(f'sweep: FAILED {trial.config["trial"]} (Ray: {trial.error_file or "trial error"})', flush=True)

  return Progress()


def run_ray(base: str, trials: list[Trial], workdir: str, resources: dict[str, float], address: str | None = None,
            parallel: int = 1) -> dict[str, Any]:
  """Runs what is not finished as Tune trials; returns {'done', 'skipped', 'failed': {name: log tail}} as
  run_local does. Locally Ray gets `parallel` CPUs (with {"cpu": 1} per trial, `parallel` trials at once)."""
  workdir = os.path.abspath(workdir)  # the Ray workers' working directory is not the driver's
  os.makedirs(workdir, exist_ok=True)
  todo, skipped = runner.pending(trials, workdir)
  if not todo:
    return {'done': [], 'skipped': skipped, 'failed': {}}
  # Tune's own result loggers (CSV, JSON, TensorBoard) would copy what summary.json and the trial folders hold;
  # its new output engine prints an experiment table even at verbose=0 (the one-line progress is ours).
  os.environ.setdefault('TUNE_DISABLE_AUTO_CALLBACK_LOGGERS', '1')
  os.environ.setdefault('RAY_AIR_NEW_OUTPUT', '0')
  # Ctrl-C stops the sweep as it stops the local engine (exit 130, the trials resume next time); Tune's own
  # handler would end fit() quietly and the interrupted trials would be listed as failed.
  os.environ.setdefault('TUNE_DISABLE_SIGINT_HANDLER', '1')
  import ray
  from ray import tune
  quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
  try:
    if address:
      ray.init(address=address, **quiet)
    else:
      ray.init(address='local', num_cpus=parallel, include_dashboard=False, **quiet)  # not a RAY_ADDRESS one
  except ConnectionError as e:
    raise ConfigError(f'--ray-address {address}: could not connect to a Ray cluster ({e})') from None
  try:
    _check_fits(resources, ray.cluster_resources(), autoscaling=bool(address))
    tuner = tune.Tuner(
        tune.with_resources(_trainable(os.path.abspath(base), os.path.relpath(base), workdir, dict(todo)),
                            resources),
        param_space={'trial': tune.grid_search([name for name, _ in todo])},
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=False),
        run_config=tune.RunConfig(name='sweep', storage_path=os.path.join(workdir, '.ray'), verbose=0,
                                  callbacks=[_progress_callback()],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
  finally:
    ray.shutdown()
  done = [name for name, _ in todo if runner.is_finished(os.path.join(workdir, name))]
  failed = {name: runner.log_tail(os.path.join(workdir, name)) for name, _ in todo if name not in done}
  return {'done': done, 'skipped': skipped, 'failed': failed}
