"""`make demo`: train the default experiment (embedded digits CNN), export it, serve it, ask it once over HTTP."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

from maasjax import cli


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def export_once(workdir: str, out: str, name: str) -> str:
  """Exports the workdir unless the latest version already holds this very checkpoint."""
  from maasjax.export import layout
  from maasjax.train.checkpoint import Checkpointer
  model_dir = os.path.join(out, name)
  versions = layout.list_versions(model_dir)
  if versions:
    meta = layout.read_metadata(os.path.join(model_dir, str(versions[-1]))) or {}
    ckpt = Checkpointer(workdir, 1, 0, False)
    try:
      step = ckpt.latest_step()
    finally:
      ckpt.close()
    if meta.get('checkpoint') == {'workdir': os.path.abspath(workdir), 'step': step}:
      print(f'demo: {model_dir}/{versions[-1]} already holds step {step}; not exporting again')
      return os.path.join(model_dir, str(versions[-1]))
  if cli.main(['export', '--workdir', workdir, '--model-name', name, '--out', out]):
    raise SystemExit(1)
  return os.path.join(model_dir, str(layout.list_versions(model_dir)[-1]))


def serve_and_ask(out: str, name: str, workdir: str) -> None:
  """Starts `maasjax serve` on 127.0.0.1, sends one held-out digit, prints the answer, stops the server."""
  import numpy as np
  from maasjax.client import Client
  from maasjax.config import load_workdir_config
  from maasjax.data import load_dataset
  batch = next(load_dataset(load_workdir_config(workdir)).eval_batches('test', 1))
  port = _free_port()
  server = subprocess.Popen([sys.executable, '-m', 'maasjax.cli', 'serve', '--model-base-path', out, '--port', str(port),
                             '--max-batch-size', '8', '--buckets', '1,8', '--log-level', 'warning'],
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  try:
    with Client(f'http://127.0.0.1:{port}') as client:
      deadline = time.time() + 180
      while not client.ready():
        if server.poll() is not None or time.time() > deadline:
          raise SystemExit(f'demo: the server did not start (exit code {server.poll()})')
        time.sleep(0.3)
      pred = client.predict(name, np.asarray(batch['inputs']))[0]
    print(f'demo: POST http://127.0.0.1:{port}/v1/models/{name}:predict -> class {pred["classes"]} '
          f'(p={max(pred["probabilities"]):.3f}); true label {int(batch["labels"][0])}')
  finally:
    server.send_signal(signal.SIGTERM)
    code = server.wait(60)
  print(f'demo: server stopped (exit code {code})')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdir', default='runs/digits_cnn')
  p.add_argument('--config', default='experiments/digits_cnn.py')
  p.add_argument('--exports', default='exports', help='model base path the demo exports to and serves')
  p.add_argument('--model-name', default='digits')
  args = p.parse_args(argv)
  rc = cli.main(['train', '--config', args.config, '--workdir', args.workdir])
  if rc:
    return rc
  with open(os.path.join(args.workdir, 'summary.json')) as f:
    summary = json.load(f)
  print(f"demo: test accuracy {summary['test/accuracy']:.4f} on the held-out digits in "
        f"{summary['wall_time_s']:.1f} s")
  path = export_once(args.workdir, args.exports, args.model_name)
  print(f'demo: SavedModel at {path}')
  serve_and_ask(args.exports, args.model_name, args.workdir)
  return 0


if __name__ == '__main__':
  sys.exit(main())
