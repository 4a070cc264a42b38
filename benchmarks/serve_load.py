r"""Serving load test: `maasjax serve` on 127.0.0.1, driven by a lean HTTP/1.1 load generator in this process.

  .venv/bin/python benchmarks/serve_load.py --model-base-path exports --model digits
  .venv/bin/python benchmarks/serve_load.py --table --rounds 5 --kserve-python /path/to/venv/bin/python

`--table`: the default (JAX) backend, the SavedModel backend (both --workers 2), the HTTP floor (a bare ASGI
app on 2 SO_REUSEPORT processes answering fixed bytes: benchmarks/http_floor.py) and, given a Python with
kserve 0.21 and jax (`pip install '.[bench]'` in another venv), KServe's ModelServer serving the same CNN
(benchmarks/kserve_digits.py), interleaved over `--rounds`; medians, p99 and ratios, plus start-up time and
resident memory of one worker per backend.

Runs batching on and off; each run sends `--requests` single-example OIP v2 JSON requests over
`--clients` keep-alive connections and reports req/s, p50/p99 latency and the server's average
batch size (from its /metrics). Needs an exported model (`make demo` writes exports/digits).
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def loaded_copies(port):
  text = httpx.get(f'http://127.0.0.1:{port}/metrics').text
  return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('maasjax_model_events_total{event="loaded"'))


def start_server(base, port, extra, workers=1):
  """Starts the server and waits until every worker has loaded its models (the first ready worker
  would otherwise accept every connection)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen([sys.executable, '-m', 'maasjax.cli', 'serve', '--model-base-path', base,
                           '--port', str(port), '--log-level', 'warning', *extra],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline:
    try:
      if (httpx.get(f'http://127.0.0.1:{port}/v2/health/ready', timeout=1).status_code == 200
          and loaded_copies(port) >= workers):
        return proc
    except httpx.HTTPError:
      pass
    if proc.poll() is not None:
      raise SystemExit(f'server exited with {proc.returncode}')
    time.sleep(0.3)
  proc.kill()
  raise SystemExit('server did not become ready')


def batch_stats(port, model):
  text = httpx.get(f'http://127.0.0.1:{port}/metrics').text
  get = lambda key: sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(key))
  return get(f'maasjax_batch_size_sum{{model="{model}"}}'), get(f'maasjax_batch_size_count{{model="{model}"}}')


async def client(port, request, n, latencies, errors):
  reader, writer = await asyncio.open_connection('127.0.0.1', port)
  for _ in range(n):
    t0 = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b'\r\n\r\n')
    length = int(head.lower().split(b'content-length:')[1].split(b'\r\n')[0])
    await reader.readexactly(length)
    latencies.append(time.perf_counter() - t0)
    if not head.startswith(b'HTTP/1.1 200'):
      errors.append(head.split(b'\r\n')[0])
  writer.close()


async def drive(port, request, clients, total):
  latencies, errors = [], []
  per = total // clients
  t0 = time.perf_counter()
  await asyncio.gather(*(client(port, request, per, latencies, errors) for _ in range(clients)))
  return time.perf_counter() - t0, latencies, errors


def asyncio_run(coro):
  import uvloop  # the load generator shares the 2 cores with the server: keep it lean
  return uvloop.run(coro)


def run(base, model, clients, total, extra, label, workers=1):
  port = free_port()
  proc = start_server(base, port, extra, workers)
  try:
    x = np.random.default_rng(0).integers(0, 17, size=64).astype(np.float32)
    body = json.dumps({'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1], 'datatype': 'FP32',
                                   'data': x.tolist()}], 'outputs': [{'name': 'classes'}]}).encode()
    request = (f'POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
               f'Content-Length: {len(body)}\r\n\r\n').encode() + body
    asyncio_run(drive(port, request, clients, min(total, 50 * clients)))  # warm connections and caches
    rows0, calls0 = batch_stats(port, model)
    seconds, lat, errors = asyncio_run(drive(port, request, clients, total))
    rows1, calls1 = batch_stats(port, model)
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
  lat_ms = np.asarray(lat) * 1e3
  return {'run': label, 'requests': len(lat), 'errors': len(errors), 'req_per_s': len(lat) / seconds,
          'p50_ms': float(np.percentile(lat_ms, 50)), 'p99_ms': float(np.percentile(lat_ms, 99)),
          'avg_batch': (rows1 - rows0) / max(calls1 - calls0, 1), 'server_args': ' '.join(extra)}


def wait_ready(port, proc, path='/v2/health/ready', timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      if httpx.get(f'http://127.0.0.1:{port}{path}', timeout=1).status_code == 200:
        return
    except httpx.HTTPError:
      pass
    if any(p.poll() is not None for p in proc):
      raise SystemExit(f'a server process exited: {[p.returncode for p in proc]}')
    time.sleep(0.2)
  raise SystemExit('server did not become ready')


def rss_mb(pid):
  for line in open(f'/proc/{pid}/status'):
    if line.startswith('VmRSS:'):
      return int(line.split()[1]) / 1024
  return float('nan')


def request_bytes(model):
  x = np.random.default_rng(0).integers(0, 17, size=64).astype(np.float32)
  body = json.dumps({'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1], 'datatype': 'FP32',
                                 'data': x.tolist()}], 'outputs': [{'name': 'classes'}]}).encode()
  return (f'POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
          f'Content-Length: {len(body)}\r\n\r\n').encode() + body


def start(kind, args, port, workers=2):
  """Starts one server kind; returns (processes, seconds until ready)."""
  t0 = time.time()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_ENABLE_ONEDNN_OPTS='0')
  quiet = dict(cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  version_dir = os.path.join(args.model_base_path, args.model, str(max(int(v) for v in os.listdir(
      os.path.join(args.model_base_path, args.model)) if v.isdigit())))
  if kind in ('jax', 'savedmodel'):
    procs = [subprocess.Popen([sys.executable, '-m', 'maasjax.cli', 'serve', '--model-base-path', args.model_base_path,
                               '--port', str(port), '--log-level', 'warning', '--backend', kind, '--workers', str(workers),
                               '--max-batch-size', str(args.max_batch_size), *timeout_args(args)], **quiet)]
    wait_ready(port, procs)
    while loaded_copies(port) < workers:
      time.sleep(0.2)
  elif kind == 'floor':
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, 'benchmarks', 'http_floor.py'), str(port)], **quiet)
             for _ in range(workers)]
    wait_ready(port, procs)
    time.sleep(1)  # every process listening
  else:
    procs = [subprocess.Popen([args.kserve_python, os.path.join(ROOT, 'benchmarks', 'kserve_digits.py'), str(port),
                               version_dir], **quiet)]
    wait_ready(port, procs, '/v2/models/digits/ready')
  return procs, time.time() - t0


def timeout_args(args) -> list[str]:
  return ['--batch-timeout-ms', args.batch_timeout_ms] if args.batch_timeout_ms else []


def stop(procs):
  for p in procs:
    p.send_signal(signal.SIGTERM)
  for p in procs:
    try:
      p.wait(60)
    except subprocess.TimeoutExpired:
      p.kill()


def measure(port, model, clients, total):
  request = request_bytes(model)
  asyncio_run(drive(port, request, clients, min(total, 50 * clients)))
  seconds, lat, errors = asyncio_run(drive(port, request, clients, total))
  lat_ms = np.asarray(lat) * 1e3
  return {'req_per_s': len(lat) / seconds, 'p50_ms': float(np.percentile(lat_ms, 50)),
          'p99_ms': float(np.percentile(lat_ms, 99)), 'errors': len(errors)}


def table(args):
  kinds = ['jax', 'savedmodel', 'floor'] + (['kserve'] if args.kserve_python else [])
  runs = {k: [] for k in kinds}
  for r in range(args.rounds):  # interleaved: every kind once per round, so drift hits all alike
    for kind in kinds:
      port = free_port()
      procs, _ = start(kind, args, port, workers=1 if kind == 'kserve' else 2)
      try:
        runs[kind].append(measure(port, args.model, args.clients, args.requests))
      finally:
        stop(procs)
      print(f'round {r + 1} {kind}: {runs[kind][-1]}', flush=True)
  med = {k: {m: float(np.median([x[m] for x in v])) for m in ('req_per_s', 'p50_ms', 'p99_ms')} for k, v in runs.items()}
  footprint = {}
  for kind in ('jax', 'savedmodel') + (('kserve',) if args.kserve_python else ()):
    port = free_port()
    procs, seconds = start(kind, args, port, workers=1)
    try:
      measure(port, args.model, 4, 400)
      footprint[kind] = {'startup_s': seconds, 'rss_mb': rss_mb(procs[0].pid)}
    finally:
      stop(procs)
  print(f'\n| server | req/s (median of {args.rounds}) | runs | p50 ms | p99 ms (median) | vs floor | vs KServe |')
  print('|---|---|---|---|---|---|---|')
  names = {'jax': 'maasjax serve --workers 2 (default: JAX artifact)', 'savedmodel': 'maasjax serve --workers 2 --backend savedmodel',
           'floor': 'HTTP floor (bare ASGI, 2 processes)', 'kserve': 'KServe 0.21 ModelServer (1 worker)'}
  for kind in kinds:
    vs_kserve = f'{med[kind]["req_per_s"] / med["kserve"]["req_per_s"]:.2f}x' if 'kserve' in med else '-'
    each = ' / '.join(f'{x["req_per_s"]:,.0f}' for x in runs[kind])
    print(f'| {names[kind]} | {med[kind]["req_per_s"]:,.0f} | {each} | '
          f'{med[kind]["p50_ms"]:.1f} | {med[kind]["p99_ms"]:.1f} | {med[kind]["req_per_s"] / med["floor"]["req_per_s"]:.2f}x | '
          f'{vs_kserve} |')
  print('\n| one worker | start-up to ready (s) | resident memory (MB) |\n|---|---|---|')
  for kind, f in footprint.items():
    print(f'| {names[kind].split(" (")[0].replace(" --workers 2", "")} | {f["startup_s"]:.1f} | {f["rss_mb"]:.0f} |')
  print(json.dumps({'runs': runs, 'median': med, 'footprint': footprint}))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model-base-path', default='exports')
  p.add_argument('--model', default='digits')
  p.add_argument('--clients', type=int, default=16)
  p.add_argument('--requests', type=int, default=8000)
  p.add_argument('--max-batch-size', type=int, default=32)
  p.add_argument('--batch-timeout-ms', help='maasjax serve --batch-timeout-ms (default: the server\'s own)')
  p.add_argument('--workers', type=int, default=1, help='server processes (maasjax serve --workers)')
  p.add_argument('--backend', default='jax', choices=('jax', 'savedmodel'))
  p.add_argument('--buckets', help='batch sizes calls are padded to (maasjax serve --buckets)')
  p.add_argument('--table', action='store_true', help='the comparison table (see the module docstring)')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--kserve-python', help='a Python with kserve 0.21 and jax, for the KServe row')
  args = p.parse_args()
  if args.table:
    return table(args)
  if not os.path.isdir(os.path.join(args.model_base_path, args.model)):
    raise SystemExit(f'{args.model_base_path}/{args.model} not found; run `make demo` (exports/digits) or '
                     f'maasjax export --workdir ... --model-name {args.model} --out {args.model_base_path}')
  common = ['--max-batch-size', str(args.max_batch_size), '--workers', str(args.workers), '--backend', args.backend]
  if args.buckets:
    common += ['--buckets', args.buckets]
  rows = [run(args.model_base_path, args.model, args.clients, args.requests,
              common + timeout_args(args), 'batching on', args.workers),
          run(args.model_base_path, args.model, args.clients, args.requests, common + ['--no-batching'], 'batching off', args.workers)]
  print(f'{"run":14s} {"requests":>8s} {"errors":>6s} {"req/s":>8s} {"p50 ms":>7s} {"p99 ms":>7s} {"avg batch":>9s}')
  for r in rows:
    print(f'{r["run"]:14s} {r["requests"]:8d} {r["errors"]:6d} {r["req_per_s"]:8.0f} {r["p50_ms"]:7.2f} '
          f'{r["p99_ms"]:7.2f} {r["avg_batch"]:9.2f}   (serve {r["server_args"]})')
  print(json.dumps(rows))


if __name__ == '__main__':
  main()
