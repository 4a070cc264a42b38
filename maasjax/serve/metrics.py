"""Prometheus metrics of one server (its own registry: no process-global state).

Under `maasjax serve --workers N` every worker writes its values to $PROMETHEUS_MULTIPROC_DIR and
`render()` reports the sum over the workers (prometheus_client's multiprocess mode).
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from maasjax.serve.batching import powers_of_two

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class ServerMetrics:
  def __init__(self, max_batch_size: int):
    self.multiprocess = bool(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))
    self.registry = CollectorRegistry()
    r = self.registry
    self.requests = Counter('maasjax_requests', 'Requests by model, API and HTTP status code',
                            ['model', 'api', 'code'], registry=r)
    self.errors = Counter('maasjax_request_errors', 'Refused or failed requests by HTTP status code',
                          ['code'], registry=r)
    self.latency = Histogram('maasjax_request_latency_seconds', 'Request latency, body read to response',
                             ['model', 'api'], buckets=LATENCY_BUCKETS, registry=r)
    self.batch_size = Histogram('maasjax_batch_size', 'Rows per model call (before padding to a bucket)',
                                ['model'], buckets=powers_of_two(max_batch_size), registry=r)
    self.queue = Gauge('maasjax_queue_rows', 'Rows waiting or running, per model (summed over workers)', ['model'],
                       registry=r, multiprocess_mode='livesum')
    # The completions engine (maasjax.serve.engine).
    self.lm_ttft = Histogram('maasjax_lm_time_to_first_token_seconds', 'Completion request queued to its first token',
                             ['model'], buckets=TOKEN_BUCKETS, registry=r)
    self.lm_itl = Histogram('maasjax_lm_inter_token_latency_seconds', 'Time between a completion\'s tokens',
                            ['model'], buckets=TOKEN_BUCKETS, registry=r)
    self.lm_tokens_per_s = Histogram('maasjax_lm_tokens_per_second', 'Tokens per second of each completion after its '
                                     'first token', ['model'], buckets=RATE_BUCKETS, registry=r)
    self.lm_active = Gauge('maasjax_lm_active_slots', 'Decode slots generating a completion', ['model'], registry=r,
                           multiprocess_mode='livesum')
    self.lm_queue = Gauge('maasjax_lm_queue_depth', 'Completions waiting for a decode slot', ['model'], registry=r,
                          multiprocess_mode='livesum')
    self.model_events = Counter('maasjax_model_events', 'Model version loads, load failures and unloads '
                                '(each worker loads its own copy)', ['model', 'event'], registry=r)

  def render(self) -> bytes:
    if self.multiprocess:
      from prometheus_client import multiprocess
      pooled = CollectorRegistry()
      multiprocess.MultiProcessCollector(pooled)
      return generate_latest(pooled)
    return generate_latest(self.registry)

  def close(self) -> None:
    """A worker that stops takes its live gauges with it (its counters stay in the totals)."""
    if self.multiprocess:
      from prometheus_client import multiprocess
      multiprocess.mark_process_dead(os.getpid())
