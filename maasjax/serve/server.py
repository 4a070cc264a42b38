"""Runs the app under uvicorn (uvloop + httptools); SIGTERM drains in-flight requests, then exits 0."""
from __future__ import annotations

import logging
import signal

import uvicorn

from maasjax.serve.app import ServeSettings, create_app
from maasjax.serve.metrics import ServerMetrics
from maasjax.serve.repository import Repository, VersionPolicy


def build(base_path: str, settings: ServeSettings, policy: VersionPolicy = VersionPolicy(),
          backend: str = 'savedmodel'):
  """The app and its repository (warm-up runs every bucket size, so no request waits for a compile)."""
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


def serve(base_path: str, settings: ServeSettings, host: str = '127.0.0.1', port: int = 8501,
          policy: VersionPolicy = VersionPolicy(), backend: str = 'savedmodel', log_level: str = 'info',
          graceful_timeout_s: float = 30.0) -> None:
  logging.basicConfig(level=getattr(logging, log_level.upper()), format='%(asctime)s %(name)s %(levelname)s %(message)s')
  app, _ = build(base_path, settings, policy, backend)
  config = uvicorn.Config(app, host=host, port=port, loop='uvloop', http='httptools', lifespan='on',
                          access_log=False, log_level=log_level, timeout_graceful_shutdown=graceful_timeout_s,
                          backlog=2048)
  _Server(config).run()
