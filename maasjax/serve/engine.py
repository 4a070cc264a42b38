"""The LLM decode engine: one thread per model version runs S decode slots (continuous batching).

Between decode steps, queued requests are prefilled (prompt padded to a length bucket) and inserted into
free slots; every step emits one token for every active slot; a slot frees on EOS, max_tokens, a stop
string, or a cancelled request (the client went away). Handlers talk to the thread through `emit`
callbacks (the app wraps them in loop.call_soon_threadsafe) and the `cancelled` flag.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from maasjax.serve.errors import ServeError

log = logging.getLogger('maasjax.serve')


@dataclasses.dataclass
class LMFunctions:
  """A version's decode-slot modules (maasjax.export.lm.load), its variables on device and its tokenizer."""
  fns: dict[str, Any]
  variables: Any
  tokenizer: Any

  @property
  def meta(self) -> dict:
    return self.fns['meta']

  def encode(self, prompt: str) -> np.ndarray:
    ids = self.tokenizer.encode(prompt)
    if self.tokenizer.bos_id is not None:
      ids = np.concatenate([[self.tokenizer.bos_id], ids]).astype(np.int32)
    return ids

  def warm_up(self) -> None:
    """Compiles prefill for every bucket, insert and decode (zeros), so no request waits for a compile."""
    meta, f = self.meta, self.fns
    cache = f['empty_cache']()
    for bucket in meta['prefill_buckets']:
      _, one = f['lm_prefill'](self.variables, np.ones((1, bucket), np.int32), np.int32(1), np.float32(1),
                               np.int32(0), np.int32(0))
      cache = f['lm_insert'](cache, one, np.int32(0))
    s, z = meta['decode_slots'], np.zeros(meta['decode_slots'], np.int32)
    tokens, cache = f['lm_decode'](self.variables, cache, z, z, z, np.ones(s, np.float32), z, z)
    np.asarray(tokens)


@dataclasses.dataclass
class Completion:
  """One prompt's generation. `emit(event)` is called from the engine thread with
  ('text', index, text) for new text and ('done', index, finish_reason, completion_tokens) at the end."""
  index: int
  prompt: np.ndarray
  max_tokens: int
  temperature: float
  top_k: int
  seed: int
  stop: tuple[str, ...]
  emit: Callable[[tuple], None]
  cancelled: bool = False
  # Engine-thread state.
  created: float = dataclasses.field(default_factory=time.perf_counter)
  ids: list = dataclasses.field(default_factory=list)
  sent: int = 0  # characters of the decoded text already emitted
  first: float = 0.0  # when the first token was emitted
  last: float = 0.0


class DecodeEngine:
  def __init__(self, lm: LMFunctions, name: str, max_queue: int, metrics=None):
    self.lm, self.name, self.max_queue = lm, name, max_queue
    self.slots: list[Completion | None] = [None] * lm.meta['decode_slots']
    self.queue: collections.deque[Completion] = collections.deque()
    self.cv = threading.Condition()
    self.stopped = False
    self.metrics = metrics
    self.holdback = 0
    self.thread = threading.Thread(target=self._run, name=f'maasjax-decode-{name}', daemon=True)
    self.thread.start()

  # --- request side (event loop) -------------------------------------------------------------
  def submit(self, completions: list[Completion]) -> None:
    with self.cv:
      if self.stopped:
        raise ServeError(503, f'model {self.name!r} is being unloaded; retry')
      if len(self.queue) + len(completions) > self.max_queue:
        raise ServeError(429, f'model {self.name!r} has {len(self.queue)} completions queued (limit {self.max_queue}); '
                              'retry later')
      self.queue.extend(completions)
      self._gauges()
      self.cv.notify()

  def close(self) -> None:
    with self.cv:
      self.stopped = True
      self.cv.notify()

  # --- engine thread ---------------------------------------------------------------------------
  def _gauges(self) -> None:
    if self.metrics is not None:
      self.metrics.lm_queue.labels(self.name).set(len(self.queue))
      self.metrics.lm_active.labels(self.name).set(sum(s is not None for s in self.slots))

  def _run(self) -> None:
    f, meta, variables = self.lm.fns, self.lm.meta, self.lm.variables
    s = meta['decode_slots']
    cache = f['empty_cache']()
    tokens, positions, steps = np.zeros(s, np.int32), np.zeros(s, np.int32), np.zeros(s, np.int32)
    temperature, top_k, seed = np.zeros(s, np.float32), np.zeros(s, np.int32), np.zeros(s, np.int32)
    while True:
      with self.cv:
        while not self.stopped and not self.queue and not any(self.slots):
          self.cv.wait()
        if self.stopped:
          break
        admit = []
        free = [i for i, c in enumerate(self.slots) if c is None]
        while free and self.queue:
          admit.append((free.pop(0), self.queue.popleft()))
      try:
        for i, c in admit:  # new requests join between decode steps
          if c.cancelled:
            continue
          n = len(c.prompt)
          bucket = next(b for b in meta['prefill_buckets'] if b >= n)
          padded = np.zeros((1, bucket), np.int32)
          padded[0, :n] = c.prompt
          first, one = f['lm_prefill'](variables, padded, np.int32(n), np.float32(c.temperature), np.int32(c.top_k),
                                       np.int32(c.seed))
          cache = f['lm_insert'](cache, one, np.int32(i))
          tokens[i], positions[i], steps[i] = int(np.asarray(first)[0]), n, 1
          temperature[i], top_k[i], seed[i] = c.temperature, c.top_k, c.seed
          self.slots[i] = c
          self._token(i, int(tokens[i]))
        for i, c in enumerate(self.slots):
          if c is not None and c.cancelled:
            self.slots[i] = None
        with self.cv:
          self._gauges()
        if not any(self.slots):
          continue
        next_s, cache = f['lm_decode'](variables, cache, tokens, positions, steps, temperature, top_k, seed)
        next_s = np.asarray(next_s)
        for i, c in enumerate(self.slots):
          if c is not None:
            tokens[i], positions[i], steps[i] = next_s[i], positions[i] + 1, steps[i] + 1
            self._token(i, int(next_s[i]))
      except Exception as e:  # noqa: BLE001 - fail the requests in flight, keep serving
        log.exception('decode engine of %s failed', self.name)
        for i, c in enumerate(self.slots):
          if c is not None:
            c.emit(('error', c.index, f'{type(e).__name__}: {str(e)[:300]}'))
            self.slots[i] = None
        cache = f['empty_cache']()
    with self.cv:  # unloaded: whoever still waits gets an answer
      for c in [c for c in self.slots if c is not None] + list(self.queue):
        c.emit(('error', c.index, f'model {self.name!r} was unloaded'))

  def _token(self, i: int, token: int) -> None:
    """Records slot i's new token, emits new text, and frees the slot when the request is done."""
    c, now = self.slots[i], time.perf_counter()
    m = self.metrics
    if m is not None:
      if not c.ids:
        m.lm_ttft.labels(self.name).observe(now - c.created)
      else:
        m.lm_itl.labels(self.name).observe(now - c.last)
    c.last = now
    c.ids.append(token)
    eos = token == self.lm.meta.get('eos_id')
    text = self.lm.tokenizer.decode(c.ids)
    finish = 'stop' if eos else ('length' if len(c.ids) >= c.max_tokens else None)
    hit = min((k for k in (text.find(s, max(0, c.sent - len(s) + 1)) for s in c.stop) if k >= 0), default=-1)
    if hit >= 0:
      text, finish = text[:hit], 'stop'
    if finish is None:
      # Held back: a possible start of a stop string, or an incomplete UTF-8 sequence (byte vocabularies).
      keep = max((len(s) - 1 for s in c.stop), default=0)
      end = len(text) - keep
      while end > c.sent and text[end - 1] == '\ufffd':
        end -= 1
    else:
      end = len(text)
    if end > c.sent:
      c.emit(('text', c.index, text[c.sent:end]))
      c.sent = end
    if finish is not None:
      if m is not None and len(c.ids) > 1:
        m.lm_tokens_per_s.labels(self.name).observe((len(c.ids) - 1) / max(now - c.first, 1e-9))
      c.emit(('done', c.index, finish, len(c.ids)))
      self.slots[i] = None
    elif len(c.ids) == 1:
      c.first = now
