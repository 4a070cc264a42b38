"""Shared test setup: strict JAX flags, the repo root on sys.path, small helpers.

Each area may add fixtures below; keep them independent of each other.
"""
import os
import sys

# Classic (non-partitionable) threefry: XLA:CPU compiles random init of conv kernels ~3x faster
# with it (6 s -> 2 s per CNN init here). Values differ from the default but are just as random;
# set before jax is imported so subprocesses started by tests inherit it.
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', 'false')
# As the CLI does (maasjax/cli.py): no TF start-up banners in test output.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax  # noqa: E402
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Catch silent broadcasting bugs: every implicit rank promotion is an error in tests.
jax.config.update('jax_numpy_rank_promotion', 'raise')


def experiment_config(name: str, **overrides):
  """Loads experiments/<name>.py and applies dotted overrides, e.g. num_train_steps=5."""
  from maasjax.config import load_config
  config = load_config(os.path.join(ROOT, 'experiments', f'{name}.py'))
  for key, value in overrides.items():
    node = config
    parts = key.split('.')
    for part in parts[:-1]:
      node = node[part]
    with node.unlocked():
      node[parts[-1]] = value
  config.progress_bar = False
  return config


@pytest.fixture
def config_factory():
  return experiment_config


def run_cli(*args, env=None, timeout=600, cwd=ROOT):
  """Runs `python -m maasjax.cli ARGS` in a subprocess; returns CompletedProcess (text)."""
  import subprocess
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, '-m', 'maasjax.cli', *args], cwd=cwd, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


def saved_steps(workdir: str) -> list[int]:
  """The complete checkpoint steps in a workdir (Orbax renames a step's folder into place when done)."""
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def sigkill_after_checkpoint(cmd, workdir: str, step: int, env=None, timeout: float = 300) -> None:
  """Runs `cmd` (a maasjax train) and SIGKILLs it once a checkpoint at or past `step` is complete."""
  import signal
  import subprocess
  import time
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and proc.poll() is None and not any(s >= step for s in saved_steps(workdir)):
      time.sleep(0.02)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope='session')
def exported(tmp_path_factory):
  """The digits CNN and ResNet, trained a few steps and exported once per session (serve_fixtures)."""
  from serve_fixtures import build_exported
  return build_exported(tmp_path_factory)


# Tests sharing the session's exported models run in one pytest-xdist process.
EXPORTED_MODULES = {'test_export.py', 'test_serve.py', 'test_serve_reload.py', 'test_portable.py', 'test_worker_restart.py',
                    'test_onnx.py'}


def pytest_itemcollected(item):
  """Under `pytest -n N --dist loadgroup`, each module's tests stay in one process (its module-scoped
  fixtures are built once), and the modules that share the exported models share one process.
  (Marked as each item is collected: pytest-xdist reads the groups before conftest modifyitems hooks.)"""
  module = os.path.basename(str(item.fspath))
  item.add_marker(pytest.mark.xdist_group('exported' if module in EXPORTED_MODULES else module))
