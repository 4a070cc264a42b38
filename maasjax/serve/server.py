"""Runs the app under uvicorn (uvloop + httptools); SIGTERM drains in-flight requests, then exits 0.

`workers > 1` runs that many server processes under uvicorn's supervisor (which restarts a worker
that dies and drains them all on SIGTERM), each with its own copy of the models and its own
batcher, so HTTP handling uses every core. Each worker listens on its own SO_REUSEPORT socket, so
the kernel spreads connections evenly; on one shared socket the first idle worker would accept a
whole burst of new connections. Their Prometheus metrics are pooled through prometheus_client's
multiprocess mode: /metrics on any worker reports the sum over all of them. Each response leaves
in one write (HttpProtocol).
"""
from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

import uvicorn

try:  # uvicorn's protocol class is not public API: without it, responses leave in two writes as before
  from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - a uvicorn that moved it
  HttpToolsProtocol = None

from maasjax.config import ConfigError
from maasjax.serve.app import ServeSettings, create_app
from maasjax.serve.repository import Repository, VersionPolicy

SPEC_ENV = 'MAASJAX_SERVE_SPEC'  # how the supervisor hands a worker process its settings
RESTARTED_ENV = 'MAASJAX_WORKER_RESTARTED'  # '1' for a worker that replaces one that died
PROMETHEUS_DIR_ENV = 'PROMETHEUS_MULTIPROC_DIR'


def worker_answers(conn, sentinel, timeout: float) -> bool:
  """A worker's health check: send a ping on `conn`; True once it answers, False at once if its process
  ends meanwhile (`sentinel`, multiprocessing's exit handle), or after `timeout` without an answer.

  uvicorn's ping polls the pipe alone, and the supervisor still holds the pipe's other end, so a worker
  killed during a ping gives no EOF: the ping waited out the whole timeout (60 s here) before the worker
  was replaced, while the connections queued on its socket timed out.
  """
  import pickle
  from multiprocessing.connection import wait
  try:
    conn.send(b'ping')
    if conn not in wait([conn, sentinel], timeout):
      return False
    conn.recv()
    return True
  except (OSError, EOFError, pickle.UnpicklingError):
    return False


def serving_process(backend: str) -> None:
  """Process-wide settings of a server process, before any model loads. The JAX artifact's CPU calls run on
  the calling thread: for a 0.1-0.3 ms call, async dispatch's hand-off to XLA's thread and back costs
  about as much again (the digits CNN at batch 1: 125 against 196 us)."""
  if backend == 'jax':
    import jax
    jax.config.update('jax_cpu_enable_async_dispatch', False)  # read when the CPU client is created


def build(base_path: str, settings: ServeSettings, policy: VersionPolicy = VersionPolicy(),
          backend: str = 'jax'):
  """The app and its repository (warm-up runs every bucket size, so no request waits for a compile)."""
  from maasjax.serve.metrics import ServerMetrics
  metrics = ServerMetrics(settings.max_batch_size)

  def on_event(model: str, event: str) -> None:
    metrics.model_events.labels(model, event).inc()
    if event in ('loaded', 'unloaded'):
      freeze_long_lived()

  repo = Repository(base_path, policy, backend, warmup_batch_sizes=settings.buckets, on_event=on_event)
  return create_app(repo, settings, metrics), repo


def freeze_long_lived() -> None:
  """Collects once, then hides every object alive now from the garbage collector (gc.freeze): the loaded
  models' modules, weights and compiled code live as long as they are served. Without it, each full
  collection walked them all under load (100 ms with the digits CNN served; 9.5 us of collector time
  per request, 1.4 us with them frozen). Unfrozen first, so an unloaded version's objects can go."""
  gc.unfreeze()
  gc.collect()
  gc.freeze()


class _CoalescedWrites:
  """A connection's transport that writes what was written to it during one event-loop iteration with one
  syscall, at the iteration's end. uvicorn writes a response's status line and headers, then its body, each at
  once: on loopback that is two syscalls and two wake-ups of the client per response instead of one."""

  def __init__(self, transport, loop):
    self._transport = transport
    self._loop = loop
    self._held: list[bytes] = []

  def write(self, data: bytes) -> None:
    if not self._held:
      self._loop.call_soon(self._flush)
    self._held.append(data)

  def _flush(self) -> None:
    if self._held:
      data = b''.join(self._held) if len(self._held) > 1 else self._held[0]
      self._held.clear()
      if not self._transport.is_closing():
        self._transport.write(data)

  def close(self) -> None:
    self._flush()
    self._transport.close()

  def __getattr__(self, name):  # everything else (is_closing, get_extra_info, pause_reading, ...) as is
    return getattr(self._transport, name)


if HttpToolsProtocol is not None:
  class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response with one syscall."""

    def connection_made(self, transport) -> None:
      super().connection_made(_CoalescedWrites(transport, self.loop))
else:  # pragma: no cover
  HttpProtocol = 'httptools'


class _Server(uvicorn.Server):
  """uvicorn re-raises the signal it caught after a graceful shutdown; ours ends with exit code 0."""

  def run(self, sockets=None):
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # what uvicorn re-raises into: a no-op
    try:
      super().run(sockets)
    finally:
      signal.signal(signal.SIGTERM, previous)


def _listen_error(host: str, port: int, e: OSError) -> ConfigError:
  hint = '; another server holds it: stop it or choose another --port' if e.errno == errno.EADDRINUSE else ''
  return ConfigError(f'cannot listen on {host}:{port}: {e.strerror}{hint}')


def _reuseport_sockets(host: str, port: int, n: int, backlog: int) -> list[socket.socket]:
  """`n` listening sockets on one address, each its own accept queue (SO_REUSEPORT); bound before any
  model loads, so a port in use is reported at once. n == 1: a plain socket (the port is ours alone)."""
  try:
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
  except socket.gaierror as e:
    raise ConfigError(f'--host {host!r}: {e.strerror}') from None
  sockets = []
  try:
    if n > 1 and port:  # SO_REUSEPORT would share a port another such server holds: try it alone first
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
    for _ in range(n):
      sock = socket.socket(family, socket.SOCK_STREAM)
      sockets.append(sock)
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      if n > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
      sock.bind(addr)
      addr = sock.getsockname()  # port 0: the others join the port the first one got
      sock.listen(backlog)
      sock.set_inheritable(True)
  except OSError as e:
    for sock in sockets:
      sock.close()
    raise _listen_error(host, port, e) from None
  return sockets


def configure_logging(log_level: str, worker: bool = False) -> None:
  """maasjax's loggers at `log_level`; other libraries stay at INFO (their debug output is not ours).
  At debug, each request is one JSON line on stderr (maasjax.serve.requests, no prefix)."""
  level = getattr(logging, log_level.upper())
  pid = '[%(process)d]' if worker else ''
  logging.basicConfig(level=max(level, logging.INFO), format=f'%(asctime)s %(name)s{pid} %(levelname)s %(message)s')
  logging.getLogger('maasjax').setLevel(level)
  requests = logging.getLogger('maasjax.serve.requests')
  if level <= logging.DEBUG and not requests.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter('%(message)s'))
    requests.addHandler(handler)
    requests.propagate = False


def worker_app():
  """The app of one worker process, built from the spec its supervisor left in the environment."""
  from maasjax.serve.auth import ApiKeys
  spec = json.loads(os.environ[SPEC_ENV])
  configure_logging(spec['log_level'], worker=True)
  settings = dict(spec['settings'], buckets=tuple(spec['settings']['buckets']),
                  api_keys=ApiKeys.load(spec['api_keys_path']),
                  load_before_serving=os.environ.get(RESTARTED_ENV) == '1')
  policy = VersionPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec['policy'].items()})
  serving_process(spec['backend'])
  app, _ = build(spec['base_path'], ServeSettings(**settings), policy, spec['backend'])
  return app


def serve(base_path: str, settings: ServeSettings, host: str = '127.0.0.1', port: int = 8501,
          policy: VersionPolicy = VersionPolicy(), backend: str = 'jax', log_level: str = 'info',
          graceful_timeout_s: float = 30.0, workers: int = 1, api_keys_path: str | None = None,
          on_listening=None) -> None:
  """Serves until SIGTERM or Ctrl-C. With `workers > 1`, `api_keys_path` (or $MAASJAX_API_KEYS) is
  re-read by each worker, which must find the same keys as `settings.api_keys`. The port is bound
  first (a ConfigError at once if it is taken), then `on_listening(port)` runs, then models load
  in the background while the server answers."""
  configure_logging(log_level)
  common = dict(host=host, port=port, loop='uvloop', http=HttpProtocol, lifespan='on', access_log=False,
                log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s, backlog=2048)
  if workers <= 1:
    sockets = _reuseport_sockets(host, port, 1, common['backlog'])
    if on_listening:
      on_listening(sockets[0].getsockname()[1])
    serving_process(backend)
    app, _ = build(base_path, settings, policy, backend)
    _Server(uvicorn.Config(app, **common)).run(sockets=sockets)
    return
  from uvicorn.supervisors.multiprocess import Multiprocess, Process
  from uvicorn.config import STARTUP_FAILURE

  class Supervisor(Multiprocess):
    """uvicorn's supervisor, but worker i always gets socket i alone: a worker that dies is replaced on its
    own SO_REUSEPORT socket (uvicorn's would listen on all of them), and the replacement loads and warms
    its models before accepting, while connections wait in that socket's queue."""

    def _start(self, i: int, restarted: bool) -> Process:
      os.environ[RESTARTED_ENV] = '1' if restarted else '0'  # read by worker_app in the new process
      process = Process(self.config, [self.sockets[i]])
      process.start()
      return process

    def init_processes(self) -> None:
      self.processes = [self._start(i, restarted=False) for i in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
      for i, process in enumerate(self.processes):
        if self.should_exit.is_set():
          return
        if process.process.is_alive() and worker_answers(process.parent_conn, process.process.sentinel,
                                                          self.config.timeout_worker_healthcheck):
          continue
        process.kill()  # dead, or hung: either way replaced
        process.join()
        if process.exitcode == STARTUP_FAILURE:  # the app cannot start: a restart would fail the same way
          logging.getLogger('maasjax.serve').error('worker %s failed to start; stopping', process.pid)
          self.should_exit.set()
          return
        logging.getLogger('maasjax.serve').warning('worker %s (socket %d) died with exit code %s; restarting it',
                                                   process.pid, i, process.exitcode)
        self.processes[i] = self._start(i, restarted=True)

    def restart_all(self) -> None:  # SIGHUP: one at a time, each on its own socket
      for i, old in enumerate(self.processes):
        if self.should_exit.is_set():
          return
        new = self._start(i, restarted=True)
        if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
          new.kill()
          new.join()
          return
        old.terminate()
        old.join()
        self.processes[i] = new

  spec = {'base_path': base_path, 'backend': backend, 'log_level': log_level, 'api_keys_path': api_keys_path,
          'policy': dataclasses.asdict(policy),
          'settings': {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != 'api_keys'}}
  metrics_dir = tempfile.mkdtemp(prefix='maasjax-metrics-')
  saved = {k: os.environ.get(k) for k in (SPEC_ENV, PROMETHEUS_DIR_ENV, RESTARTED_ENV)}
  os.environ[SPEC_ENV] = json.dumps(spec)
  os.environ[PROMETHEUS_DIR_ENV] = metrics_dir  # the workers (spawned) import prometheus_client after this
  try:
    config = uvicorn.Config('maasjax.serve.server:worker_app', factory=True, workers=workers,
                            timeout_worker_healthcheck=60, **common)  # a worker loading TF is slow to answer pings
    sockets = _reuseport_sockets(host, port, workers, common['backlog'])
    if on_listening:
      on_listening(sockets[0].getsockname()[1])
    logging.getLogger('maasjax.serve').info('%d workers on http://%s:%d', workers, host, sockets[0].getsockname()[1])
    Supervisor(config, sockets=sockets).run()
  finally:
    shutil.rmtree(metrics_dir, ignore_errors=True)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
