"""The HTTP app: TF Serving REST v1 and Open Inference Protocol v2 routes over one model repository.

A POST to a predict route (`/v2/models/NAME[/versions/V]/infer`, `/v1/models/NAME[/versions/V]:predict`)
is answered on raw ASGI, in front of FastAPI: its middleware, routing and Request/Response objects cost
more per request than parsing the body and running a small model. Every other route is a plain FastAPI
handler that parses with orjson and answers with prebuilt bytes (no pydantic models per request).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import maasjax
from maasjax.serve import codec, completions
from maasjax.serve.auth import ApiKeys
from maasjax.serve.backends import LoadedModel
from maasjax.serve.batching import Runner
from maasjax.serve.errors import ServeError
from maasjax.serve.metrics import ServerMetrics
from maasjax.serve.repository import Repository
from maasjax.spec import SERVING_DEFAULT

log = logging.getLogger('maasjax.serve')
request_log = logging.getLogger('maasjax.serve.requests')  # one JSON line per request, at debug level
JSON = 'application/json'
JSON_BYTES = JSON.encode()
# The predict routes, as Starlette matches them ({name} and {version} are [^/]+, greedy).
PREDICT_PATH = re.compile(r'/(?:v2/models/(?P<v2>[^/]+)(?:/versions/(?P<v2_version>[^/]+))?/infer'
                          r'|v1/models/(?P<v1>[^/]+)(?:/versions/(?P<v1_version>[^/]+))?:predict)')
_REQUEST_HEADERS = {b'content-length', b'authorization', b'inference-header-content-length'}


@dataclasses.dataclass
class ServeSettings:
  max_batch_size: int = 32
  batch_timeout_ms: float = 0.0  # 0: requests parsed in one loop iteration, or while the model runs, share a call
  buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
  batching: bool = True
  max_queue_rows: int = 1024  # per model version and signature; beyond it requests get 429
  max_queued_completions: int = 256  # per LM version, waiting for a decode slot; beyond it 429
  max_body_bytes: int = 16 << 20
  poll_seconds: float = 2.0
  model_threads: int = 1
  api_keys: ApiKeys | None = None
  # Load every version before taking a request: a worker restarted beside others that already serve (its
  # connections wait in its socket's queue meanwhile instead of meeting 503s).
  load_before_serving: bool = False


def _error_body(message: str) -> bytes:
  return codec.dumps({'error': message})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
  return Response(_error_body(message), status_code=status, media_type=JSON, headers=headers)


def response_start(status: int, content: bytes, content_type: bytes = JSON_BYTES,
                   headers: dict[str, str] | None = None) -> dict:
  """The ASGI response start message, with the header list Starlette's Response would build."""
  raw = [(k.lower().encode('latin-1'), v.encode('latin-1')) for k, v in headers.items()] if headers else []
  raw.append((b'content-length', b'%d' % len(content)))
  raw.append((b'content-type', content_type))
  return {'type': 'http.response.start', 'status': status, 'headers': raw}


def request_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
  """The headers a predict route reads, from the ASGI scope (the first of repeated ones, as Starlette)."""
  out = {}
  for k, v in raw:
    if k in _REQUEST_HEADERS and k not in out:
      out[k] = v
  return {k.decode(): v.decode('latin-1') for k, v in out.items()}


def _wrong_method(request: Request) -> ServeError:
  """A GET of `/v1/models/NAME[/versions/V]:predict` (a model name never holds ':'): 405, not 'no model NAME:predict'."""
  method = request.url.path.rsplit(':', 1)[1]
  if method != 'predict':
    return ServeError(400, f'method {method!r} is not supported; use :predict')
  return ServeError(405, f'{request.method} {request.url.path}: :predict takes POST', {'Allow': 'POST'})


def _version(text: str | None) -> int | None:
  if text is None:
    return None
  if not text.isdigit():
    raise ServeError(400, f'version {text!r}: expected a positive integer')
  return int(text)


async def receive_body(receive, length: str | None, limit: int) -> bytes:
  """The request body from ASGI `receive`, or a 400/413 (a declared length over the limit is refused unread)."""
  if length is not None:
    if not length.isdigit():
      raise ServeError(400, f'Content-Length {length!r} is not a number')
    if int(length) > limit:
      raise ServeError(413, f'request body of {length} bytes exceeds the limit of {limit} bytes')
  chunks, size = [], 0
  while True:  # one message, unless the body came in chunks (chunked transfer: count as it arrives)
    message = await receive()
    if message['type'] == 'http.disconnect':
      raise ServeError(400, 'the client disconnected before sending the whole body')
    chunk = message.get('body', b'')
    size += len(chunk)
    if size > limit:
      raise ServeError(413, f'request body exceeds the limit of {limit} bytes')
    if not message.get('more_body'):
      return b''.join(chunks + [chunk]) if chunks else chunk
    chunks.append(chunk)


async def _read_body(request: Request, limit: int) -> bytes:
  return await receive_body(request.receive, request.headers.get('content-length'), limit)


class _PredictFirst:
  """ASGI: a POST to a predict route goes straight to `predict(scope, receive, send, api, name, version)`;
  everything else (a GET of a predict route included, for its 405) goes to the FastAPI app."""

  def __init__(self, app, predict):
    self.app = app
    self.predict = predict

  async def __call__(self, scope, receive, send):
    if scope['type'] == 'http' and scope['method'] == 'POST':
      m = PREDICT_PATH.fullmatch(scope['path'])
      if m is not None:
        v2 = m['v2']
        if v2 is not None:
          return await self.predict(scope, receive, send, 'v2', v2, m['v2_version'])
        return await self.predict(scope, receive, send, 'v1', m['v1'], m['v1_version'])
    return await self.app(scope, receive, send)


class _PredictRoute:
  """The same handler as a Starlette route's ASGI app (reached only if the front door is bypassed)."""

  def __init__(self, predict, api: str):
    self.predict = predict
    self.api = api

  async def __call__(self, scope, receive, send):
    p = scope['path_params']
    await self.predict(scope, receive, send, self.api, p['name'], p.get('version'))


class _RequestLog:
  """ASGI middleware, installed only at debug level: one JSON line per HTTP request (any route)."""

  def __init__(self, app):
    self.app = app
    self.pid = os.getpid()

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    t0, code = time.perf_counter(), [500]

    async def send_and_note(message):
      if message['type'] == 'http.response.start':
        code[0] = message['status']
      await send(message)
    try:
      await self.app(scope, receive, send_and_note)
    finally:
      client = scope.get('client')
      request_log.debug(codec.dumps({
          'ts': round(time.time(), 6), 'pid': self.pid, 'method': scope['method'], 'path': scope['path'],
          'code': code[0], 'latency_ms': round((time.perf_counter() - t0) * 1e3, 3),
          'client': client[0] if client else None}).decode())


def create_app(repo: Repository, settings: ServeSettings, metrics: ServerMetrics):
  """The ASGI app: predict routes on raw ASGI in front of the FastAPI app that answers the rest."""
  executor = ThreadPoolExecutor(settings.model_threads, thread_name_prefix='maasjax-model')
  state = {'loop': None}
  metric_children = {}

  def close_runners(model: LoadedModel) -> None:
    loop = state['loop']
    if loop is not None:
      loop.call_soon_threadsafe(lambda: [r.close() for r in model.batchers.values()])
    if model.engine is not None:
      model.engine.close()

  repo.on_unload = close_runners

  @contextlib.asynccontextmanager
  async def lifespan(app):
    state['loop'] = asyncio.get_running_loop()
    if settings.load_before_serving:
      await state['loop'].run_in_executor(None, repo.poll)
      repo.start_watching(settings.poll_seconds)
    else:
      # The port opens at once: versions found are LOADING (v1 status, v2 ready 503) until loaded and warmed.
      repo.mark_loading()
      repo.start_watching(settings.poll_seconds, poll_first=True)
    yield
    repo.stop()
    executor.shutdown(wait=True)
    metrics.close()

  # FastAPI's OpenTelemetry hooks cost a provider lookup per request; /metrics is our observability.
  app = FastAPI(title='maasjax model server', version=maasjax.__version__, lifespan=lifespan,
                docs_url=None, redoc_url=None, openapi_url=None,
                telemetry={'tracing': False, 'metrics': False, 'logs': False, 'operation_spans': False})

  @app.exception_handler(ServeError)
  async def serve_error(request, e: ServeError):
    return _error(e.status, e.message, e.headers)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, e: StarletteHTTPException):
    allow = (e.headers or {}).get('Allow')
    hint = f'; use {allow}' if e.status_code == 405 and allow else ''
    return _error(e.status_code, f'{request.method} {request.url.path}: {e.detail}{hint}', e.headers)

  def authorize(request: Request, name: str) -> None:
    if settings.api_keys is not None:
      settings.api_keys.check(request.headers.get('authorization'), name)

  def runner(model: LoadedModel, sig_name: str) -> Runner:
    r = model.batchers.get(sig_name)
    if r is None:
      sig = model.signatures[sig_name]
      batch = settings.max_batch_size if sig.batchable else 1 << 30
      r = Runner(functools.partial(model.run, sig_name), executor, max_batch_size=batch,
                 batch_timeout_s=settings.batch_timeout_ms / 1000, buckets=settings.buckets if sig.batchable else (),
                 max_queue_rows=settings.max_queue_rows, observe_batch=metrics.batch_size.labels(model.name).observe,
                 set_queue=metrics.queue.labels(model.name).set, batching=settings.batching and sig.batchable,
                 batchable=sig.batchable)
      model.batchers[sig_name] = r
    return r

  def signature(model: LoadedModel, sig_name: str | None):
    sig_name = sig_name or SERVING_DEFAULT
    if not isinstance(sig_name, str) or sig_name not in model.signatures:
      raise ServeError(400, f'signature {sig_name!r} is not in model {model.name!r}; its signatures: '
                            f'{", ".join(sorted(model.signatures))}')
    return sig_name, model.signatures[sig_name]

  async def predict(scope, receive, send, api: str, name: str, version: str | None) -> None:
    """A POST to a predict route, whole: auth, body, model lookup, `work[api]`, the response and its metrics."""
    t0 = time.perf_counter()
    headers = request_headers(scope['headers'])
    label = name if name in repo.status else '_unknown'
    try:
      if settings.api_keys is not None:
        settings.api_keys.check(headers.get('authorization'), name)
      body = await receive_body(receive, headers.get('content-length'), settings.max_body_bytes)
      model = repo.get(name, _version(version))
      content, content_type, extra = await work[api](model, body, headers)
      code = 200
    except ServeError as e:
      code, content, content_type, extra = e.status, _error_body(e.message), JSON_BYTES, e.headers
    except Exception as e:  # noqa: BLE001 - a model failure is the server's 500, with the reason
      log.exception('model %s failed', name)
      code, content, content_type, extra = 500, _error_body(
          f'model {name!r} failed: {type(e).__name__}: {str(e)[:300]}'), JSON_BYTES, None
    elapsed = time.perf_counter() - t0
    key = (label, api, code)
    children = metric_children.get(key)
    if children is None:  # label lookups cost more than the increments: cache the children
      children = metric_children[key] = (metrics.requests.labels(label, api, str(code)),
                                         metrics.latency.labels(label, api))
    children[0].inc()
    children[1].observe(elapsed)
    if code != 200:
      metrics.errors.labels(str(code)).inc()
    await send(response_start(code, content, content_type, extra))
    await send({'type': 'http.response.body', 'body': content})

  def both_versions(api: str, suffix: str, fn, method: str = 'GET') -> None:
    """Routes /API/models/NAME[/versions/V]SUFFIX to `fn(name, version or None, request)`.

    Plain Starlette routes: FastAPI's per-request dependency solving costs as much as parsing the body.
    """
    async def endpoint(request: Request):
      p = request.path_params
      result = fn(p['name'], p.get('version'), request)
      return await result if asyncio.iscoroutine(result) else result
    for path in (f'/{api}/models/{{name}}', f'/{api}/models/{{name}}/versions/{{version}}'):
      app.add_route(path + suffix, endpoint, methods=[method])

  # Each work function returns (body, content type, extra headers).
  async def v2_infer_work(model, body, headers):
    req, binary = codec.v2_split_body(body, headers.get('inference-header-content-length'))
    params = req.get('parameters') if isinstance(req, dict) else None
    sig_name, sig = signature(model, (params or {}).get('signature_name') if isinstance(params, dict) else None)
    inputs = codec.v2_inputs(req, binary, sig)
    outputs = await runner(model, sig_name).submit(inputs, codec.batch_rows(inputs, sig))
    content, extra = codec.v2_response(req, model.name, model.version, outputs)
    return content, b'application/octet-stream' if extra else JSON_BYTES, extra

  async def v1_predict_work(model, body, headers):
    req = codec.loads(body)
    sig_name, sig = signature(model, req.get('signature_name') if isinstance(req, dict) else None)
    inputs, row_format = codec.v1_inputs(req, sig)
    outputs = await runner(model, sig_name).submit(inputs, codec.batch_rows(inputs, sig))
    return codec.v1_response(outputs, row_format), JSON_BYTES, None

  work = {'v2': v2_infer_work, 'v1': v1_predict_work}
  # Registered first (routes are matched in order) for what FastAPI answers on these paths: a 405 to a GET.
  for api, suffix in (('v2', '/infer'), ('v1', ':predict')):
    for path in (f'/{api}/models/{{name}}', f'/{api}/models/{{name}}/versions/{{version}}'):
      app.add_route(path + suffix, _PredictRoute(predict, api), methods=['POST'])

  # --- TF Serving REST API v1 ---------------------------------------------------------------
  @app.post('/v1/models/{name}:{method}')
  async def v1_other_method(name: str, method: str, request: Request):
    raise ServeError(400, f'method {method!r} is not supported; use :predict')

  def v1_status(name: str, version: str | None, request: Request) -> Response:
    if ':' in name or ':' in (version or ''):
      raise _wrong_method(request)
    authorize(request, name)
    v = _version(version)
    if name not in repo.status:
      repo.get(name)  # raises the 404 naming what is served
    statuses = sorted(repo.status[name].items())
    if v is not None:
      statuses = [(k, s) for k, s in statuses if k == v]
      if not statuses:
        raise ServeError(404, f'version {v} of model {name!r} is not known')
    return Response(codec.dumps({'model_version_status': [
        {'version': str(k), 'state': s.state,
         'status': {'error_code': 'UNKNOWN' if s.error else 'OK', 'error_message': s.error}} for k, s in statuses]}),
        media_type=JSON)

  both_versions('v1', '', v1_status)

  def v1_metadata(name: str, version: str | None, request: Request) -> Response:
    authorize(request, name)
    model = repo.get(name, _version(version))
    return Response(codec.dumps({
        'model_spec': {'name': name, 'signature_name': '', 'version': str(model.version)},
        'metadata': {'signature_def': {'signature_def': {
            k: codec.v1_signature_def(s) for k, s in model.signatures.items()}}, **client_metadata(model)}}),
        media_type=JSON)

  both_versions('v1', '/metadata', v1_metadata)

  def client_metadata(model: LoadedModel) -> dict:
    """What a REST client needs beyond tensor shapes: the vocabulary of a text model, and label names."""
    meta = model.metadata
    out = {k: meta[k] for k in ('tokenizer',) if meta.get(k)}
    if meta.get('label_names'):
      out['label_names'] = meta['label_names']
    return out

  # --- Open Inference Protocol v2 -------------------------------------------------------------
  @app.get('/v2')
  async def v2_server():
    return Response(codec.dumps({'name': 'maasjax', 'version': maasjax.__version__,
                                 'extensions': ['binary_tensor_data', 'model_repository']}), media_type=JSON)

  @app.get('/v2/health/live')
  async def v2_live():
    return Response(codec.dumps({'live': True}), media_type=JSON)

  @app.get('/v2/health/ready')
  async def v2_ready():
    ready = repo.ready()
    return Response(codec.dumps({'ready': ready}), status_code=200 if ready else 503, media_type=JSON)

  def v2_metadata(name: str, version: str | None, request: Request) -> Response:
    authorize(request, name)
    model = repo.get(name, _version(version))
    sig = model.signatures.get(SERVING_DEFAULT) or next(iter(model.signatures.values()))
    body = {'name': name, 'versions': [str(v) for v in sorted(repo.served.get(name, {}))],
            'platform': model.platform,
            'inputs': [codec.v2_tensor_metadata(k, s.shape, s.dtype) for k, s in sig.inputs.items()],
            'outputs': [codec.v2_tensor_metadata(k, shape, dtype) for k, (shape, dtype) in sig.outputs.items()]}
    parameters = client_metadata(model)
    if parameters:
      body['parameters'] = parameters
    return Response(codec.dumps(body), media_type=JSON)

  both_versions('v2', '', v2_metadata)

  def v2_model_ready(name: str, version: str | None, request: Request) -> Response:
    authorize(request, name)
    try:
      repo.get(name, _version(version))
      ready = True
    except ServeError as e:
      if e.status != 503:
        raise
      ready = False
    return Response(codec.dumps({'name': name, 'ready': ready}), status_code=200 if ready else 503, media_type=JSON)

  both_versions('v2', '/ready', v2_model_ready)

  @app.get('/v2/models/{name}/config')
  async def v2_model_config(name: str, request: Request):
    """Triton's model configuration extension, enough for tritonclient's get_model_config."""
    authorize(request, name)
    model = repo.get(name)
    sig = model.signatures[SERVING_DEFAULT]
    dims = lambda shape: [-1 if d is None else d for d in shape[1:]]
    return Response(codec.dumps({
        'name': name, 'platform': model.platform,
        'max_batch_size': settings.max_batch_size if sig.batchable else 0,
        'input': [{'name': k, 'data_type': 'TYPE_' + codec.v2_datatype(s.dtype), 'dims': dims(s.shape)}
                  for k, s in sig.inputs.items()],
        'output': [{'name': k, 'data_type': 'TYPE_' + codec.v2_datatype(dt), 'dims': dims(shape)}
                   for k, (shape, dt) in sig.outputs.items()],
        'dynamic_batching': {'max_queue_delay_microseconds': int(settings.batch_timeout_ms * 1000)}
        if settings.batching else None}), media_type=JSON)

  @app.post('/v2/repository/index')
  async def v2_repository_index(request: Request):
    allowed = settings.api_keys.models_for(request.headers.get('authorization')) if settings.api_keys else None
    entries = []
    for name in repo.model_names():
      if allowed is not None and name not in allowed:
        continue
      for v, s in sorted(repo.status.get(name, {}).items()):
        entry = {'name': name, 'version': str(v), 'state': 'READY' if s.state == 'AVAILABLE' else 'UNAVAILABLE',
                 'reason': s.error or ('' if s.state == 'AVAILABLE' else s.state)}
        model = repo.served.get(name, {}).get(v)
        if model is not None:
          meta = model.metadata
          entry.update(task=meta.get('task', ''), platform=model.platform,
                       metrics={k: x for k, x in meta.get('metrics', {}).items() if k.startswith('test/')})
        entries.append(entry)
    return Response(codec.dumps(entries), media_type=JSON)

  completions.add_routes(app, repo, settings, metrics, authorize, _read_body, state)

  @app.get('/metrics')
  async def prometheus_metrics():
    return Response(metrics.render(), media_type='text/plain; version=0.0.4')

  front = _PredictFirst(app, predict)
  return _RequestLog(front) if request_log.isEnabledFor(logging.DEBUG) else front
