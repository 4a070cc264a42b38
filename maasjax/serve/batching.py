"""Dynamic batching: concurrent requests become one model call, padded to a fixed bucket size.

A batch closes when it holds `max_batch_size` rows or its oldest request has waited
`batch_timeout_ms` (0: at the next event-loop iteration, so every request parsed meanwhile joins it);
requests that arrive while the model is busy wait in the queue and go together in the next call.
Padding to a few bucket sizes means nothing recompiles under load.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import time
from concurrent.futures import Executor
from typing import Callable

import numpy as np

from maasjax.serve.errors import ServeError

Arrays = dict[str, np.ndarray]


def powers_of_two(limit: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to and including `limit` (which need not be a power of 2)."""
  sizes, b = [], 1
  while b < limit:
    sizes.append(b)
    b *= 2
  return tuple(sizes) + (limit,)


def bucket_sizes(max_batch_size: int, text: str | None = None) -> tuple[int, ...]:
  """Explicit sizes, or powers of 2 up to max_batch_size (1, 2, 4, 8, ..., max).

  Powers of 2 waste at most half a call on padding (with 16 clients over 2 workers a batch of 5-8
  rows would otherwise pay for 16); each size is one more warm-up call at load time.
  """
  sizes = {int(s) for s in text.split(',') if s.strip()} if text else set(powers_of_two(max_batch_size))
  return tuple(sorted({s for s in sizes if 0 < s < max_batch_size} | {max_batch_size}))


def pad_rows(arrays: list[Arrays], size: int) -> Arrays:
  """Concatenates requests along axis 0 and zero-pads to `size` rows."""
  out = {}
  for k in arrays[0]:
    parts = [a[k] for a in arrays]
    rows = sum(p.shape[0] for p in parts)
    if rows < size:
      parts.append(np.zeros((size - rows,) + parts[0].shape[1:], parts[0].dtype))
    out[k] = parts[0] if len(parts) == 1 else np.concatenate(parts)
  return out


class Runner:
  """Runs one signature of one model version, batching requests when `max_batch_size` > 1.

  A call that took under `inline_call_s` the last time at its bucket size runs on the event loop: on a
  busy CPU a hand-off to the model thread and back costs more than such a call (0.1-0.3 ms for the digits
  CNN). Longer calls (a generate signature, a large model) run in `executor`, so the loop keeps answering.
  """

  def __init__(self, run: Callable[[Arrays], Arrays], executor: Executor, *, max_batch_size: int,
               batch_timeout_s: float, buckets: tuple[int, ...], max_queue_rows: int,
               observe_batch: Callable[[int], None], set_queue: Callable[[int], None], batching: bool = True,
               batchable: bool = True, inline_call_s: float = 0.002):
    self.run = run
    self.executor = executor
    self.max_batch_size = max_batch_size
    self.timeout_s = batch_timeout_s
    self.buckets = buckets
    self.max_queue_rows = max_queue_rows
    self.observe_batch = observe_batch
    self.set_queue = set_queue
    self.batching = batching and max_batch_size > 1
    # A non-batchable signature's inputs have unrelated first axes (a graph's nodes, edges, graphs):
    # each request runs as sent, never padded, split or sliced by rows.
    self.batchable = batchable
    self.inline_call_s = inline_call_s
    self._call_s: dict[int, float] = {}  # seconds the last call took, by bucket size
    self._queue: collections.deque = collections.deque()  # (arrays, rows, future, arrival time)
    self._queued_rows = 0  # rows in the queue
    self._rows = 0  # rows queued or running
    self._flush_handle: asyncio.Handle | None = None  # a flush scheduled (soon, or at the oldest's deadline)
    self._flush_soon = False
    self._busy = False  # a batch is running in the executor: it flushes the queue when it ends
    self._closed = False

  def _bucket(self, rows: int) -> int:
    i = bisect.bisect_left(self.buckets, rows)
    return self.buckets[i] if i < len(self.buckets) else rows

  def _admit(self, rows: int) -> None:
    if self._rows and self._rows + rows > self.max_queue_rows:  # alone, any request gets in
      raise ServeError(429, f'server overloaded: {self._rows} rows already queued for this model (limit '
                            f'{self.max_queue_rows}); retry with backoff')
    self._rows += rows

  def _release(self, rows: int) -> None:
    self._rows -= rows
    if not self._rows:
      self.set_queue(0)  # the gauge is written once per batch, and here when the model goes idle

  def _inline(self, size: int) -> bool:
    """Whether the last call at this bucket size was short enough to run on the event loop."""
    return self._call_s.get(size, self.inline_call_s) < self.inline_call_s

  def _timed(self, size: int, arrays: Arrays) -> Arrays:
    t0 = time.perf_counter()
    out = self.run(arrays)
    self._call_s[size] = time.perf_counter() - t0
    return out

  async def _call(self, arrays: Arrays, rows: int) -> Arrays:
    """One model call on `rows` rows (padded to their bucket), on the loop or in the executor."""
    size = self._bucket(rows) if self.batchable else 0  # an unbatchable signature: one duration for any input
    self.observe_batch(rows if self.batchable else 1)
    self.set_queue(self._rows)
    if self.batchable:
      arrays = pad_rows([arrays], size)
    if self._inline(size):
      return self._timed(size, arrays)
    return await asyncio.get_running_loop().run_in_executor(self.executor, self._timed, size, arrays)

  async def submit(self, inputs: Arrays, rows: int) -> Arrays:
    """The model's outputs for these `rows` rows (possibly run together with other requests)."""
    self._admit(rows)
    try:
      if not self.batchable:
        return await self._call(inputs, rows)
      if not self.batching or self._closed:
        outputs = []
        for start in range(0, rows, self.max_batch_size):  # large requests run in max-size chunks
          n = min(self.max_batch_size, rows - start)
          out = await self._call({k: v[start:start + n] for k, v in inputs.items()}, n)
          outputs.append({k: v[:n] for k, v in out.items()})
        return outputs[0] if len(outputs) == 1 else {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
      loop = asyncio.get_running_loop()
      futures = []
      for start in range(0, rows, self.max_batch_size):
        n = min(self.max_batch_size, rows - start)
        fut = loop.create_future()
        self._queue.append((inputs if n == rows else {k: v[start:start + n] for k, v in inputs.items()}, n, fut,
                            loop.time()))
        self._queued_rows += n
        futures.append(fut)
      self._schedule(loop)
      if len(futures) == 1:
        return await futures[0]
      results = [await f for f in futures]
      return {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    finally:
      self._release(rows)

  def close(self) -> None:
    """Stop batching (requests already queued still run)."""
    self._closed = True

  def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
    """A flush at the next loop iteration when the batch is full or there is no timeout (every request parsed
    meanwhile joins it), else when the oldest request has waited the timeout. A running batch flushes when
    it ends."""
    if self._busy or not self._queue:
      return
    soon = self.timeout_s <= 0 or self._queued_rows >= self.max_batch_size
    if self._flush_handle is not None:
      if self._flush_soon or not soon:
        return
      self._flush_handle.cancel()
    self._flush_soon = soon
    self._flush_handle = (loop.call_soon(self._flush) if soon else
                          loop.call_at(self._queue[0][3] + self.timeout_s, self._flush))

  def _flush(self) -> None:
    self._flush_handle = None
    queue = self._queue
    batch, rows = [], 0
    while queue and rows + queue[0][1] <= self.max_batch_size:
      item = queue.popleft()
      batch.append(item)
      rows += item[1]
    self._queued_rows -= rows
    loop = asyncio.get_running_loop()
    try:
      size = self._bucket(rows)
      self.observe_batch(rows)
      self.set_queue(self._rows)
      arrays = pad_rows([item[0] for item in batch], size)
      if not self._inline(size):
        done = loop.run_in_executor(self.executor, self._timed, size, arrays)
        self._busy = True
        done.add_done_callback(lambda f: self._ended(batch, f, loop))
        return
      out = self._timed(size, arrays)
    except Exception as e:  # noqa: BLE001 - every waiting request gets the error; the queue goes on
      self._fail(batch, e)
    else:
      self._deliver(batch, out)
    self._schedule(loop)

  def _ended(self, batch: list, done: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
    self._busy = False
    if done.cancelled():
      self._fail(batch, RuntimeError('the model call was cancelled (the server is stopping)'))
    elif done.exception() is not None:
      self._fail(batch, done.exception())
    else:
      self._deliver(batch, done.result())
    self._schedule(loop)

  @staticmethod
  def _deliver(batch: list, out: Arrays) -> None:
    start = 0
    for _, n, fut, _ in batch:
      if not fut.done():
        fut.set_result({k: v[start:start + n] for k, v in out.items()})
      start += n

  @staticmethod
  def _fail(batch: list, e: BaseException) -> None:
    for item in batch:
      if not item[2].done():
        item[2].set_exception(e)
