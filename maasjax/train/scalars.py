"""TensorBoard event files written without TensorFlow.

clu's writer goes through `tf.summary`, and tensorboard's own EventFileWriter opens files through
`tf.io.gfile` (it imports TensorFlow whenever it is installed); importing TensorFlow took ~4 s of every
`maasjax train` start-up on a 2-core CPU, longer than a digits run trains. An event file is a sequence of
TFRecords holding `Event` protos: tensorboard's RecordWriter frames them (length, masked CRC32C) into a
plain file, and its protos describe scalars (`simple_value`) and the run's hyperparameters (the HParams
plugin's session-start summary), which is what TensorBoard shows for a run. The metrics go to the same
local workdir as metrics.jsonl.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2
from tensorboard.summary.writer.record_writer import RecordWriter


class ScalarWriter:
  """Scalars and hyperparameters appended to LOGDIR/events.out.tfevents.<time>.<host>."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(logdir, f'events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}')
    self._records = RecordWriter(open(path, 'ab'))
    self._records.write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2').SerializeToString())

  def _add(self, step: int, summary) -> None:
    self._records.write(event_pb2.Event(step=int(step), wall_time=time.time(), summary=summary).SerializeToString())

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self._add(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                               for k, v in scalars.items()]))

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    self._add(0, summary_v2.hparams_pb(hparams))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()
