"""Builds the next training batches (host data + transfer to the devices) on a background thread.

The batch of each step is still `make_batch(step)`, computed in step order, so the data order stays a
pure function of (seed, step) and a resumed run sees exactly the batches an uninterrupted one does.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable


class Prefetcher:
  """`get(step)` returns `make_batch(step)` for step = start, start+1, ... < stop, built `depth` ahead
  (depth 0: built by `get` itself, no thread)."""

  def __init__(self, make_batch: Callable[[int], Any], start: int, stop: int, depth: int = 2):
    self._make_batch = make_batch
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._next = start
    self._thread = None
    if depth <= 0:
      return
    self._thread = threading.Thread(target=self._produce, args=(make_batch, start, stop), daemon=True,
                                    name='maasjax-prefetch')
    self._thread.start()

  def _produce(self, make_batch, start: int, stop: int) -> None:
    for step in range(start, stop):
      try:
        item = (step, make_batch(step), None)
      except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
        item = (step, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None or self._stop.is_set():
        return

  def get(self, step: int) -> Any:
    if step != self._next:
      raise ValueError(f'batches are produced in order: expected step {self._next}, asked for {step}')
    if self._thread is None:
      self._next = step + 1
      return self._make_batch(step)
    got, batch, error = self._queue.get()
    self._next = step + 1
    if error is not None:
      raise error
    assert got == step, (got, step)
    return batch

  def close(self) -> None:
    """Stops the thread (it finishes the batch it is building) and drops what it had built."""
    self._stop.set()
    if self._thread is None:
      return
    while self._thread.is_alive():
      try:
        self._queue.get(timeout=0.05)
      except queue.Empty:
        pass
    self._thread.join()
