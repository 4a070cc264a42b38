"""Dynamic batching: concurrent requests become one model call, padded to a fixed bucket size.

A batch closes when it holds `max_batch_size` rows or its oldest request has waited
`batch_timeout_ms`; requests that arrive while the model is busy wait in the queue and go
together in the next call. Padding to a few bucket sizes means nothing recompiles under load.
The model runs in an executor thread, so the event loop keeps parsing requests meanwhile.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
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
  """Runs one signature of one model version, batching requests when `max_batch_size` > 1."""

  def __init__(self, run: Callable[[Arrays], Arrays], executor: Executor, *, max_batch_size: int,
               batch_timeout_s: float, buckets: tuple[int, ...], max_queue_rows: int,
               observe_batch: Callable[[int], None], set_queue: Callable[[int], None], batching: bool = True,
               batchable: bool = True):
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
    self._queue: collections.deque = collections.deque()  # (arrays, rows, future, arrival time)
    self._rows = 0  # rows queued or running
    self._wakeup = asyncio.Event()
    self._closed = False
    self._task: asyncio.Task | None = None

  def _bucket(self, rows: int) -> int:
    i = bisect.bisect_left(self.buckets, rows)
    return self.buckets[i] if i < len(self.buckets) else rows

  def _admit(self, rows: int) -> None:
    if self._rows and self._rows + rows > self.max_queue_rows:  # alone, any request gets in
      raise ServeError(429, f'server overloaded: {self._rows} rows already queued for this model (limit '
                            f'{self.max_queue_rows}); retry with backoff')
    self._rows += rows
    self.set_queue(self._rows)

  def _release(self, rows: int) -> None:
    self._rows -= rows
    self.set_queue(self._rows)

  async def _run_padded(self, arrays: list[Arrays], rows: int) -> Arrays:
    size = self._bucket(rows)
    self.observe_batch(rows)
    return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, pad_rows(arrays, size))

  async def submit(self, inputs: Arrays, rows: int) -> Arrays:
    """The model's outputs for these `rows` rows (possibly run together with other requests)."""
    self._admit(rows)
    try:
      if not self.batchable:
        self.observe_batch(1)
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.run, inputs)
      if not self.batching or self._closed:
        outputs = []
        for start in range(0, rows, self.max_batch_size):  # large requests run in max-size chunks
          chunk = {k: v[start:start + self.max_batch_size] for k, v in inputs.items()}
          n = min(self.max_batch_size, rows - start)
          out = await self._run_padded([chunk], n)
          outputs.append({k: v[:n] for k, v in out.items()})
        return outputs[0] if len(outputs) == 1 else {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
      loop = asyncio.get_running_loop()
      futures = []
      for start in range(0, rows, self.max_batch_size):
        chunk = {k: v[start:start + self.max_batch_size] for k, v in inputs.items()}
        fut = loop.create_future()
        self._queue.append((chunk, min(self.max_batch_size, rows - start), fut, loop.time()))
        futures.append(fut)
      self._wakeup.set()
      if self._task is None:
        self._task = loop.create_task(self._loop())
      results = [await f for f in futures]
      return results[0] if len(results) == 1 else {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    finally:
      self._release(rows)

  def close(self) -> None:
    """Stop batching once the queue is empty (requests already queued still run)."""
    self._closed = True
    self._wakeup.set()

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    queue = self._queue
    while True:
      if not queue:
        if self._closed:
          return
        self._wakeup.clear()
        await self._wakeup.wait()
        continue
      # Wait until the batch is full or its oldest request has waited the timeout.
      deadline = queue[0][3] + self.timeout_s
      while sum(item[1] for item in queue) < self.max_batch_size:
        remaining = deadline - loop.time()
        if remaining <= 0:
          break
        self._wakeup.clear()
        try:
          await asyncio.wait_for(self._wakeup.wait(), remaining)
        except asyncio.TimeoutError:
          break
      batch, rows = [], 0
      while queue and rows + queue[0][1] <= self.max_batch_size:
        item = queue.popleft()
        batch.append(item)
        rows += item[1]
      try:
        out = await self._run_padded([item[0] for item in batch], rows)
      except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the loop goes on
        for item in batch:
          if not item[2].done():
            item[2].set_exception(e)
        continue
      start = 0
      for arrays, n, fut, _ in batch:
        if not fut.done():
          fut.set_result({k: v[start:start + n] for k, v in out.items()})
        start += n
