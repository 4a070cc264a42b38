"""`maasjax serve`: the model server over a base path of exported models."""
from __future__ import annotations

from maasjax.config import ConfigError


def add_args(p):
  p.add_argument('--model-base-path', required=True, help='folder of NAME/VERSION/ SavedModels (maasjax export --out)')
  p.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1: this machine only)')
  p.add_argument('--port', type=int, default=8501, help='port (default 8501, as TF Serving\'s REST port)')
  p.add_argument('--backend', default='jax', choices=('jax', 'savedmodel'),
                 help='jax (default: the version folder\'s jax.export artifact, faster per call) or savedmodel (the TF '
                      'SavedModel, as TF Serving runs it)')
  p.add_argument('--version-policy', default='latest', help='latest | latest:N | all | specific:V1,V2 (default latest)')
  p.add_argument('--max-batch-size', type=int, default=32, help='rows per model call (default 32)')
  p.add_argument('--batch-timeout-ms', type=float, default=0.0,
                 help='longest a request waits for others to join its batch (default 0: no wait; requests that '
                      'arrive together, or while the model is busy, still share a call)')
  p.add_argument('--buckets', help='batch sizes calls are padded to (default 1,2,4,8,...,max-batch-size)')
  p.add_argument('--no-batching', action='store_true', help='one model call per request (still padded to buckets)')
  p.add_argument('--max-queue-rows', type=int, default=1024, help='queued rows per model before 429 (default 1024)')
  p.add_argument('--max-queued-completions', type=int, default=256,
                 help='completions per LM waiting for a decode slot before 429 (default 256)')
  p.add_argument('--max-body-bytes', type=int, default=16 << 20, help='request body limit (default 16 MiB)')
  p.add_argument('--api-keys', help='file of "KEY MODEL[,MODEL...]" / "KEY *" lines (or set $MAASJAX_API_KEYS)')
  p.add_argument('--poll-seconds', type=float, default=2.0, help='how often to look for new versions (default 2)')
  p.add_argument('--model-threads', type=int, default=1, help='threads running model calls (default 1)')
  p.add_argument('--workers', type=int, default=1,
                 help='server processes sharing the port, each with its own copy of the models (default 1; '
                      'one per core lets HTTP handling use every core)')
  p.add_argument('--log-level', default='info', choices=('debug', 'info', 'warning', 'error'),
                 help='debug adds one JSON line per request (method, path, code, latency, pid) on stderr')


def settings_from_args(args):
  from maasjax.serve.app import ServeSettings
  from maasjax.serve.auth import ApiKeys
  from maasjax.serve.batching import bucket_sizes
  for flag, value, low in (('--max-batch-size', args.max_batch_size, 1), ('--max-queue-rows', args.max_queue_rows, 1),
                           ('--max-queued-completions', args.max_queued_completions, 1),
                           ('--max-body-bytes', args.max_body_bytes, 1), ('--model-threads', args.model_threads, 1),
                           ('--workers', args.workers, 1),
                           ('--port', args.port, 1)):
    if value < low:
      raise ConfigError(f'{flag} {value}: expected an integer >= {low}')
  if args.port > 65535:
    raise ConfigError(f'--port {args.port}: expected a TCP port between 1 and 65535')
  if args.batch_timeout_ms < 0 or args.poll_seconds <= 0:
    raise ConfigError('--batch-timeout-ms must be >= 0 and --poll-seconds > 0')
  try:
    buckets = bucket_sizes(args.max_batch_size, args.buckets)
  except ValueError:
    raise ConfigError(f'--buckets {args.buckets!r}: expected a comma list of positive integers') from None
  return ServeSettings(max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms, buckets=buckets,
                       batching=not args.no_batching, max_queue_rows=args.max_queue_rows,
                       max_queued_completions=args.max_queued_completions,
                       max_body_bytes=args.max_body_bytes, poll_seconds=args.poll_seconds,
                       model_threads=args.model_threads, api_keys=ApiKeys.load(args.api_keys))


def run(args, overrides):
  import sys
  from maasjax.serve.repository import VersionPolicy, check_base_path
  from maasjax.serve.server import serve
  settings = settings_from_args(args)
  policy = VersionPolicy.parse(args.version_policy)
  warning = check_base_path(args.model_base_path)
  if warning:
    print(f'maasjax serve: warning: {warning}', file=sys.stderr, flush=True)

  def announce(port):  # after the port is bound, before any model loads
    print(f'maasjax serve: {args.model_base_path} on http://{args.host}:{port} '
          f'(REST v1 /v1/models/NAME:predict, v2 /v2/models/NAME/infer, OpenAI /v1/completions for LMs, '
          'metrics /metrics); '
          'models load in the background (v1 status LOADING, v2 ready 503 until loaded)', flush=True)
  serve(args.model_base_path, settings, args.host, args.port, policy, args.backend, args.log_level,
        workers=args.workers, api_keys_path=args.api_keys, on_listening=announce)
