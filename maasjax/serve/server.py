"""Runs the app under uvicorn (uvloop + httptools); SIGTERM drains in-flight requests, then exits 0.

`workers > 1` runs that many server processes under uvicorn's supervisor (which restarts a worker
that dies and drains them all on SIGTERM), each with its own copy of the models and its own
batcher, so HTTP handling uses every core. Each worker listens on its own SO_REUSEPORT socket, so
the kernel spreads connections evenly; on one shared socket the first idle worker would accept a
whole burst of new connections. Their Prometheus metrics are pooled through prometheus_client's
multiprocess mode: /metrics on any worker reports the sum over all of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import tempfile

import uvicorn

from maasjax.config import ConfigError
from maasjax.serve.app import ServeSettings, create_app
from maasjax.serve.repository import Repository, VersionPolicy

SPEC_ENV = 'MAASJAX_SERVE_SPEC'  # how the supervisor hands a worker process its settings
PROMETHEUS_DIR_ENV = 'PROMETHEUS_MULTIPROC_DIR'


def build(base_path: str, settings: ServeSettings, policy: VersionPolicy = VersionPolicy(),
          backend: str = 'savedmodel'):
  """The app and its repository (warm-up runs every bucket size, so no request waits for a compile)."""
  from maasjax.serve.metrics import ServerMetrics
  metrics = ServerMetrics(settings.max_batch_size)
  repo = Repository(base_path, policy, backend, warmup_batch_sizes=settings.buckets,
                    on_event=lambda model, event: metrics.model_events.labels(model, event).inc())
  return create_app(repo, settings, metrics), repo


class _Server(uvicorn.Server):
  """uvicorn re-raises the signal it caught after a graceful shutdown; ours ends with exit code 0."""

  def run(self, sockets=None):
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # what uvicorn re-raises into: a no-op
    try:
      super().run(sockets)
    finally:
      signal.signal(signal.SIGTERM, previous)


def _reuseport_sockets(host: str, port: int, n: int, backlog: int) -> list[socket.socket]:
  """`n` listening sockets on one address, each its own accept queue (SO_REUSEPORT)."""
  family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
  sockets = []
  try:
    for _ in range(n):
      sock = socket.socket(family, socket.SOCK_STREAM)
      sockets.append(sock)
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      sock.bind(addr)
      addr = sock.getsockname()  # port 0: the others join the port the first one got
      sock.listen(backlog)
      sock.set_inheritable(True)
  except OSError as e:
    for sock in sockets:
      sock.close()
    raise ConfigError(f'cannot listen on {host}:{port}: {e.strerror}') from None
  return sockets


def worker_app():
  """The app of one worker process, built from the spec its supervisor left in the environment."""
  from maasjax.serve.auth import ApiKeys
  spec = json.loads(os.environ[SPEC_ENV])
  logging.basicConfig(level=getattr(logging, spec['log_level'].upper()),
                      format='%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s')
  settings = dict(spec['settings'], buckets=tuple(spec['settings']['buckets']),
                  api_keys=ApiKeys.load(spec['api_keys_path']))
  policy = VersionPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec['policy'].items()})
  app, _ = build(spec['base_path'], ServeSettings(**settings), policy, spec['backend'])
  return app


def serve(base_path: str, settings: ServeSettings, host: str = '127.0.0.1', port: int = 8501,
          policy: VersionPolicy = VersionPolicy(), backend: str = 'savedmodel', log_level: str = 'info',
          graceful_timeout_s: float = 30.0, workers: int = 1, api_keys_path: str | None = None) -> None:
  """Serves until SIGTERM or Ctrl-C. With `workers > 1`, `api_keys_path` (or $MAASJAX_API_KEYS) is
  re-read by each worker, which must find the same keys as `settings.api_keys`."""
  logging.basicConfig(level=getattr(logging, log_level.upper()), format='%(asctime)s %(name)s %(levelname)s %(message)s')
  common = dict(host=host, port=port, loop='uvloop', http='httptools', lifespan='on', access_log=False,
                log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s, backlog=2048)
  if workers <= 1:
    app, _ = build(base_path, settings, policy, backend)
    _Server(uvicorn.Config(app, **common)).run()
    return
  from uvicorn.supervisors.multiprocess import Multiprocess, Process

  class Supervisor(Multiprocess):
    def init_processes(self) -> None:  # worker i gets socket i (a restarted worker listens on all of them)
      for i in range(self.processes_num):
        process = Process(self.config, [self.sockets[i]])
        process.start()
        self.processes.append(process)

  spec = {'base_path': base_path, 'backend': backend, 'log_level': log_level, 'api_keys_path': api_keys_path,
          'policy': dataclasses.asdict(policy),
          'settings': {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != 'api_keys'}}
  metrics_dir = tempfile.mkdtemp(prefix='maasjax-metrics-')
  saved = {k: os.environ.get(k) for k in (SPEC_ENV, PROMETHEUS_DIR_ENV)}
  os.environ[SPEC_ENV] = json.dumps(spec)
  os.environ[PROMETHEUS_DIR_ENV] = metrics_dir  # the workers (spawned) import prometheus_client after this
  try:
    config = uvicorn.Config('maasjax.serve.server:worker_app', factory=True, workers=workers,
                            timeout_worker_healthcheck=60, **common)  # a worker loading TF is slow to answer pings
    sockets = _reuseport_sockets(host, port, workers, common['backlog'])
    logging.getLogger('maasjax.serve').info('%d workers on http://%s:%d', workers, host, sockets[0].getsockname()[1])
    Supervisor(config, sockets=sockets).run()
  finally:
    shutil.rmtree(metrics_dir, ignore_errors=True)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
