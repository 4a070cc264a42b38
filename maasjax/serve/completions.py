"""OpenAI-compatible routes over the decode engine: POST /v1/completions, POST /v1/chat/completions (a plain
role-prefixed template), GET /v1/models. Errors are OpenAI's error object; API keys apply as elsewhere."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from maasjax.config import ConfigError
from maasjax.serve import codec
from maasjax.serve.engine import Completion, DecodeEngine
from maasjax.serve.errors import ServeError

log = logging.getLogger('maasjax.serve')
JSON = 'application/json'
ERROR_TYPES = {401: 'authentication_error', 403: 'permission_error', 404: 'invalid_request_error',
               429: 'rate_limit_error'}
MAX_STOP = 4


def openai_error(status: int, message: str, param: str | None = None, headers=None) -> Response:
  kind = ERROR_TYPES.get(status, 'invalid_request_error' if status < 500 else 'server_error')
  code = 'model_not_found' if status == 404 else None
  return Response(codec.dumps({'error': {'message': message, 'type': kind, 'param': param, 'code': code}}),
                  status_code=status, media_type=JSON, headers=headers)


class FieldError(ServeError):
  def __init__(self, param: str, message: str):
    super().__init__(400, message)
    self.param = param


def _number(body: dict, key: str, default, low=None, high=None, integer=False):
  value = body.get(key)
  if value is None:
    return default
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok or (low is not None and value < low) or (high is not None and value > high):
    kind = 'an integer' if integer else 'a number'
    bounds = ' '.join(x for x in (f'>= {low}' if low is not None else '', f'<= {high}' if high is not None else '') if x)
    raise FieldError(key, f'{key}={value!r}: expected {kind} {bounds}'.rstrip())
  return value


def parse_options(body: dict) -> dict:
  """The sampling fields of a completions request, checked; unsupported ones refused by name."""
  for key, unsupported in (('n', lambda v: v not in (None, 1)), ('best_of', lambda v: v not in (None, 1)),
                           ('logprobs', lambda v: v not in (None, False, 0)), ('echo', lambda v: bool(v)),
                           ('suffix', lambda v: v is not None), ('logit_bias', lambda v: bool(v)),
                           ('presence_penalty', lambda v: v not in (None, 0)),
                           ('frequency_penalty', lambda v: v not in (None, 0))):
    if unsupported(body.get(key)):
      raise FieldError(key, f'{key}={body.get(key)!r} is not supported by this server')
  top_p = _number(body, 'top_p', 1.0, 0.0, 1.0)
  if top_p != 1.0:
    raise FieldError('top_p', f'top_p={top_p!r} is not supported (nucleus sampling); use top_k or temperature')
  stop = body.get('stop')
  stop = [stop] if isinstance(stop, str) else (stop or [])
  if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
    raise FieldError('stop', f'stop: expected a non-empty string or a list of up to {MAX_STOP} of them')
  seed = _number(body, 'seed', None, integer=True)
  stream = body.get('stream', False)
  if not isinstance(stream, bool):
    raise FieldError('stream', f'stream={stream!r}: expected true or false')
  options = body.get('stream_options') or {}
  return {'max_tokens': _number(body, 'max_tokens', 16, 1, integer=True),
          'temperature': float(_number(body, 'temperature', 1.0, 0.0, 2.0)),
          'top_k': _number(body, 'top_k', 0, 0, integer=True), 'stop': tuple(stop),
          'seed': secrets.randbits(31) if seed is None else seed % (1 << 31), 'stream': stream,
          'include_usage': bool(isinstance(options, dict) and options.get('include_usage'))}


def chat_prompt(messages) -> str:
  """The plain template: one 'role: content' line per message, then 'assistant:' to continue."""
  if not isinstance(messages, list) or not messages or not all(
      isinstance(m, dict) and isinstance(m.get('role'), str) and isinstance(m.get('content'), str) for m in messages):
    raise FieldError('messages', 'messages: expected a non-empty list of {"role": ..., "content": "..."} objects')
  return ''.join(f'{m["role"]}: {m["content"]}\n' for m in messages) + 'assistant:'


def add_routes(app, repo, settings, metrics, authorize, read_body, loop_state) -> None:
  """Adds the OpenAI routes to `app`; `loop_state['loop']` is the server's event loop."""

  def engine_for(model) -> DecodeEngine:
    if model.engine is None:
      model.engine = DecodeEngine(model.lm, model.name, settings.max_queued_completions, metrics)
    return model.engine

  def lm_model(name: str):
    model = repo.get(name)
    if model.lm is None:
      raise ServeError(404, f'model {name!r} offers no completions (it is not a decoder LM exported with decode '
                            'slots); GET /v1/models lists those that do')
    return model

  def prompts_of(model, texts: list[str], max_tokens: int) -> list:
    out, limit = [], model.lm.meta['max_length']
    for text in texts:
      try:
        ids = model.lm.encode(text)
      except ConfigError as e:
        raise FieldError('prompt', f'prompt: {e}') from None
      if len(ids) == 0:
        raise FieldError('prompt', 'prompt is empty; this model needs at least one token to continue')
      if len(ids) >= limit:
        raise FieldError('prompt', f'prompt of {len(ids)} tokens is longer than this model\'s maximum length '
                                   f'({limit} tokens, prompt and completion together)')
      if len(ids) + max_tokens > limit:
        raise FieldError('max_tokens', f'prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds this '
                                       f'model\'s maximum length ({limit} tokens); lower max_tokens')
      out.append(ids)
    return out

  async def completions(request: Request, chat: bool) -> Response:
    t0 = time.perf_counter()
    name, api = '_unknown', 'openai'
    try:
      body = codec.loads(await read_body(request, settings.max_body_bytes))
      if not isinstance(body, dict):
        raise FieldError(None, 'request body: expected a JSON object')
      model_name = body.get('model')
      if not isinstance(model_name, str) or not model_name:
        raise FieldError('model', 'model: expected the name of a served language model (GET /v1/models lists them)')
      name = model_name if model_name in repo.status else name
      authorize(request, model_name)
      model = lm_model(model_name)
      opts = parse_options(body)
      if chat:
        texts = [chat_prompt(body.get('messages'))]
      else:
        prompt = body.get('prompt')
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
          raise FieldError('prompt', 'prompt: expected a string or a non-empty list of strings (token arrays are '
                                     'not supported)')
      prompts = prompts_of(model, texts, opts['max_tokens'])
      response = await run(model, prompts, opts, chat, request)
    except ServeError as e:
      response = openai_error(e.status, e.message, getattr(e, 'param', None), e.headers)
    except Exception as e:  # noqa: BLE001 - the server's 500, with the reason
      log.exception('completion on %s failed', name)
      response = openai_error(500, f'completion failed: {type(e).__name__}: {str(e)[:300]}')
    metrics.requests.labels(name, api, str(response.status_code)).inc()
    metrics.latency.labels(name, api).observe(time.perf_counter() - t0)
    if response.status_code != 200:
      metrics.errors.labels(str(response.status_code)).inc()
    return response

  async def run(model, prompts, opts, chat: bool, request: Request) -> Response:
    loop = loop_state['loop']
    events: asyncio.Queue = asyncio.Queue()
    put = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    jobs = [Completion(i, ids, opts['max_tokens'], opts['temperature'], opts['top_k'], opts['seed'] + i, opts['stop'],
                       put) for i, ids in enumerate(prompts)]
    engine_for(model).submit(jobs)  # 429 when the queue is full
    ident, created = f'{"chatcmpl" if chat else "cmpl"}-{uuid.uuid4().hex[:24]}', int(time.time())
    obj = 'chat.completion' if chat else 'text_completion'
    prompt_tokens = sum(len(p) for p in prompts)

    def choice(i, text, finish, delta: bool):
      if not chat:
        return {'text': text, 'index': i, 'logprobs': None, 'finish_reason': finish}
      key = 'delta' if delta else 'message'
      return {'index': i, key: {'role': 'assistant', 'content': text}, 'finish_reason': finish}

    def envelope(choices, usage=None, chunk=False):
      out = {'id': ident, 'object': obj + ('.chunk' if chunk and chat else ''), 'created': created,
             'model': model.name, 'choices': choices}
      if usage is not None:
        out['usage'] = usage
      return out

    def usage(completion_tokens):
      return {'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
              'total_tokens': prompt_tokens + completion_tokens}

    if not opts['stream']:
      texts, finish, generated = [''] * len(jobs), [None] * len(jobs), 0
      try:
        while any(f is None for f in finish):
          event = await events.get()
          if event[0] == 'text':
            texts[event[1]] += event[2]
          elif event[0] == 'done':
            finish[event[1]], generated = event[2], generated + event[3]
          else:
            raise ServeError(500, f'completion failed: {event[2]}')
      finally:
        for job in jobs:
          job.cancelled = True
      return Response(codec.dumps(envelope([choice(i, t, f, False) for i, (t, f) in enumerate(zip(texts, finish))],
                                           usage(generated))), media_type=JSON)

    async def stream():
      sse = lambda obj: b'data: ' + codec.dumps(obj) + b'\n\n'
      pending, generated = len(jobs), 0
      try:
        while pending:
          event = await events.get()
          if event[0] == 'text':
            yield sse(envelope([choice(event[1], event[2], None, True)], chunk=True))
          elif event[0] == 'done':
            pending, generated = pending - 1, generated + event[3]
            yield sse(envelope([choice(event[1], '', event[2], True)], chunk=True))
          else:
            yield sse({'error': {'message': f'completion failed: {event[2]}', 'type': 'server_error', 'param': None,
                                 'code': None}})
            return
        if opts['include_usage']:
          yield sse(envelope([], usage(generated), chunk=True))
        yield b'data: [DONE]\n\n'
      finally:  # also when the client goes away (the response task is cancelled): free the slots
        for job in jobs:
          job.cancelled = True

    return StreamingResponse(stream(), media_type='text/event-stream', headers={'Cache-Control': 'no-cache'})

  @app.post('/v1/completions')
  async def v1_completions(request: Request):
    return await completions(request, chat=False)

  @app.post('/v1/chat/completions')
  async def v1_chat_completions(request: Request):
    return await completions(request, chat=True)

  @app.get('/v1/models')
  async def v1_models(request: Request):
    try:
      allowed = settings.api_keys.models_for(request.headers.get('authorization')) if settings.api_keys else None
    except ServeError as e:
      return openai_error(e.status, e.message)
    data = []
    for name, versions in sorted(repo.served.items()):
      model = versions[max(versions)]
      if model.lm is None or (allowed is not None and name not in allowed):
        continue
      data.append({'id': name, 'object': 'model', 'created': int(model.metadata.get('created_unix', 0)),
                   'owned_by': 'maasjax', 'max_length': model.lm.meta['max_length'],
                   'decode_slots': model.lm.meta['decode_slots']})
    return Response(codec.dumps({'object': 'list', 'data': data}), media_type=JSON)
