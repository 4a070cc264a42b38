r"""LLM serving load test: `maasjax serve` with a char LM export, driven over /v1/completions (streaming SSE).

  .venv/bin/maasjax train --config experiments/char_lm.py --workdir runs/char_lm
  .venv/bin/maasjax export --workdir runs/char_lm --model-name char_lm --out exports
  .venv/bin/python benchmarks/completions_load.py --model-base-path exports --model char_lm

The same `--requests` prompts with mixed max_tokens (seeded) go through one server three ways, in one run:
  sequential   one request at a time
  static       batches of S (the export's decode slots) sent together; the next batch waits for the whole batch
  continuous   S, then 4S requests in flight at once; a new one is sent as soon as one ends (the engine
               fills slots between decode steps); with 4S the TTFT includes the wait for a free slot
Reported: generated tokens/s over all clients, p50/p99 time to first token, p50 request latency.
"""
import argparse
import asyncio
import json
import os
import platform
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


async def one(client, body):
  """(time to first token, latency, generated tokens) of one streamed completion."""
  t0 = time.perf_counter()
  ttft, tokens = None, 0
  async with client.stream('POST', '/v1/completions', json=dict(body, stream=True,
                                                                 stream_options={'include_usage': True})) as r:
    if r.status_code != 200:
      raise RuntimeError(f'{r.status_code}: {(await r.aread())[:300]!r}')
    async for line in r.aiter_lines():
      if not line.startswith('data: ') or line == 'data: [DONE]':
        continue
      chunk = json.loads(line[6:])
      if chunk.get('usage'):
        tokens = chunk['usage']['completion_tokens']
      elif ttft is None and chunk['choices'] and chunk['choices'][0]['text']:
        ttft = time.perf_counter() - t0
  return ttft if ttft is not None else time.perf_counter() - t0, time.perf_counter() - t0, tokens


async def run_mode(url, bodies, mode, slots, inflight=1):
  limits = httpx.Limits(max_connections=8 * slots, max_keepalive_connections=8 * slots)
  async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
    t0 = time.perf_counter()
    if mode == 'sequential':
      results = [await one(client, b) for b in bodies]
    elif mode == 'static':
      results = []
      for i in range(0, len(bodies), slots):
        results += await asyncio.gather(*(one(client, b) for b in bodies[i:i + slots]))
    else:
      gate = asyncio.Semaphore(inflight)

      async def gated(b):
        async with gate:
          return await one(client, b)
      results = await asyncio.gather(*(gated(b) for b in bodies))
    wall = time.perf_counter() - t0
  ttft = np.array([r[0] for r in results]) * 1e3
  lat = np.array([r[1] for r in results]) * 1e3
  tokens = sum(r[2] for r in results)
  return {'mode': mode, 'in_flight': inflight, 'requests': len(results), 'tokens': int(tokens), 'seconds': wall, 'tokens_per_s': tokens / wall,
          'ttft_p50_ms': float(np.percentile(ttft, 50)), 'ttft_p99_ms': float(np.percentile(ttft, 99)),
          'latency_p50_ms': float(np.percentile(lat, 50))}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model-base-path', required=True)
  p.add_argument('--model', required=True)
  p.add_argument('--requests', type=int, default=64)
  p.add_argument('--min-tokens', type=int, default=16)
  p.add_argument('--max-tokens', type=int, default=100)
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'completions_load.json'))
  args = p.parse_args()
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  server = subprocess.Popen([sys.executable, '-m', 'maasjax.cli', 'serve', '--model-base-path', args.model_base_path,
                             '--port', str(port), '--max-batch-size', '1', '--log-level', 'warning'], env=env)
  try:
    deadline = time.time() + 300
    while True:
      try:
        if httpx.get(url + '/v2/health/ready', timeout=1).status_code == 200:
          break
      except httpx.HTTPError:
        pass
      if time.time() > deadline or server.poll() is not None:
        raise SystemExit('the server did not become ready')
      time.sleep(0.3)
    models = httpx.get(url + '/v1/models').json()['data']
    spec = next(m for m in models if m['id'] == args.model)
    slots, max_length = spec['decode_slots'], spec['max_length']
    rng = np.random.default_rng(0)
    words = ['The light', 'A keeper', 'At night the', 'When the storm', 'She wrote', 'In the log']
    bodies = []
    for i in range(args.requests):
      prompt = words[i % len(words)]
      cap = min(args.max_tokens, max_length - len(prompt) - 2)
      bodies.append({'model': args.model, 'prompt': prompt, 'max_tokens': int(rng.integers(args.min_tokens, cap + 1)),
                     'temperature': 0.8, 'seed': i})
    asyncio.run(run_mode(url, bodies[:2 * slots], 'continuous', slots, slots))  # warm the HTTP path
    results = [asyncio.run(run_mode(url, bodies, mode, slots, n)) for mode, n in (
        ('sequential', 1), ('static', slots), ('continuous', slots), ('continuous', 4 * slots))]
  finally:
    server.send_signal(signal.SIGTERM)
    server.wait(60)
  base = results[0]['tokens_per_s']
  print(f'{args.model}: {slots} decode slots, max length {max_length}, {args.requests} requests of '
        f'{args.min_tokens}-{args.max_tokens} tokens; {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} cores')
  print('| mode | clients in flight | tokens/s | vs sequential | TTFT p50 ms | TTFT p99 ms | latency p50 ms |')
  print('|---|---|---|---|---|---|---|')
  for r in results:
    note = ' (each batch waits for its longest)' if r['mode'] == 'static' else ''
    print(f'| {r["mode"]} | {r["in_flight"]}{note} | {r["tokens_per_s"]:.0f} | {r["tokens_per_s"] / base:.2f}x | '
          f'{r["ttft_p50_ms"]:.1f} | {r["ttft_p99_ms"]:.1f} | {r["latency_p50_ms"]:.0f} |')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump({'model': args.model, 'slots': slots, 'max_length': max_length, 'results': results}, f, indent=2)


if __name__ == '__main__':
  main()
