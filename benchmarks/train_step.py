r"""maasjax's train step against PyTorch (eager and torch.compile) on the same models, batches and AdamW.

  .venv/bin/python benchmarks/train_step.py [--quick] [--json] [--workloads mnist_cnn,resnet,transformer_lm]
      [--allocator maasjax|hugetlb|glibc|jemalloc]

maasjax side: `maasjax.train.loop.setup(config)` -> `exp.steps.train_step`, the jit'd, donated step
`maasjax train` runs (metrics and grad norm included), built from the experiment files:
mnist_cnn.py (batch 128, tfds mock data of MNIST's shape and dtype), cifar10_resnet.py (batch 128,
32x32x3 mock data) and char_lm.py resized to 4 layers, d 256, 4 heads, seq 128, vocab 256, batch 16
(random tokens). Every workload uses AdamW (lr 1e-3, b1 0.9, b2 0.999, eps 1e-8, weight decay 1e-4,
constant schedule, no clipping), dropout off. PyTorch side: benchmarks/torch_models.py, started from
the very same weights (copied from the flax init), `torch.optim.AdamW(fused=True)` with the same
hyperparameters; torch.compile compiles the model with its loss. The first losses of both are printed:
they agree, so the two run the same computation.

Timing: each framework runs in its own worker process (so one's threads never compete with the other's),
built and warmed up (compiled) one at a time; then rounds of a few steps each (~--round_s seconds), the
workers taking turns with a 0.3 s pause between turns and the order rotating every round; the medians
are reported; each turn starts with one untimed step (refilling what the other worker's turn evicted).
All workers get the same allocator, which the script sets by re-executing itself
(--allocator; default maasjax = the GLIBC_TUNABLES `maasjax train` re-executes itself with, maasjax/cli.py:
huge pages, big blocks from the heap, the heap never trimmed; hugetlb = huge pages alone).
GFLOP/s: XLA's cost analysis of maasjax's compiled step (the same model FLOPs apply to torch), also
as a fraction of a 2048x2048 fp32 matmul measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from maasjax.cli import FAST_ALLOCATOR_ENV  # noqa: E402  (light: the CLI imports its commands lazily)
JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'
ALLOCATORS = {
    'glibc': {},
    'hugetlb': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},
    'maasjax': FAST_ALLOCATOR_ENV,
    'jemalloc': {'LD_PRELOAD': JEMALLOC, 'MALLOC_CONF': 'dirty_decay_ms:-1,muzzy_decay_ms:-1'},
}
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
OPTIMIZER_OVERRIDES = [('optimizer.name', 'adamw'), ('optimizer.learning_rate', '1e-3'), ('optimizer.b1', '0.9'),
                       ('optimizer.b2', '0.999'), ('optimizer.eps', '1e-8'), ('optimizer.weight_decay', '1e-4'),
                       ('optimizer.schedule', 'constant'), ('optimizer.warmup_steps', '0'),
                       ('optimizer.grad_clip_norm', '0.0'), ('progress_bar', 'false')]
LM = dict(vocab=256, layers=4, d=256, heads=4, mlp=1024, seq=128, batch=16)


def reexec_with_allocator(name: str) -> None:
  """Allocator settings must be in the environment before the process starts: set them and re-exec."""
  if os.environ.get('MAASJAX_BENCH_ALLOCATOR') == name:
    return
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF')}
  env.update(ALLOCATORS[name], MAASJAX_BENCH_ALLOCATOR=name)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF only reads the mock data here: its banners are noise
  if name == 'jemalloc' and not os.path.exists(JEMALLOC):
    raise SystemExit(f'--allocator jemalloc: {JEMALLOC} not found (Debian: apt-get install libjemalloc2)')
  os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


class JaxRunner:
  """maasjax's compiled train step on pre-placed batches; the state is donated step to step."""

  def __init__(self, exp, batches):
    import jax
    self.jax, self.step, self.batches = jax, exp.steps.train_step, batches
    self.state = exp.steps.init()
    self.params = jax.device_get(self.state.params)  # the torch twins start from these weights
    self.i = 0

  def run(self, n: int) -> list[float]:
    losses = []
    for _ in range(n):
      self.state, sums = self.step(self.state, self.batches[self.i % len(self.batches)])
      self.i += 1
      losses.append(sums)
    self.jax.block_until_ready(self.state)
    return [float(s['loss']) / max(float(s['count']), 1.0) for s in losses[-1:]]

  def flops_per_step(self) -> float:
    cost = self.step.lower(self.state, self.batches[0]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0))


class TorchRunner:
  """The twin model's step: forward + loss, backward, fused AdamW; optionally torch.compile'd."""

  def __init__(self, model, batches, compiled: bool):
    import torch
    import torch.nn.functional as F
    self.torch = torch
    model.train()
    try:
      self.opt = torch.optim.AdamW(model.parameters(), fused=True, **ADAMW)
    except (RuntimeError, TypeError):  # fused AdamW needs torch >= 2.4 on CPU
      self.opt = torch.optim.AdamW(model.parameters(), **ADAMW)

    def loss_fn(x, y):
      logits = model(x)
      return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    self.loss_fn = torch.compile(loss_fn) if compiled else loss_fn
    self.batches, self.i = batches, 0

  def run(self, n: int) -> list[float]:
    for _ in range(n):
      x, y = self.batches[self.i % len(self.batches)]
      self.i += 1
      self.opt.zero_grad(set_to_none=True)
      loss = self.loss_fn(x, y)
      loss.backward()
      self.opt.step()
    return [float(loss.detach())]


class RandomTokens:
  """A language-modelling dataset of uniform random ids 1..vocab-1 (speed does not depend on them)."""

  def __init__(self, seq_len: int, vocab: int):
    from maasjax.data.base import DatasetInfo
    self.seq_len, self.vocab = seq_len, vocab
    self.info = DatasetInfo(name='random_tokens', task='language_modelling', input_shape=(seq_len,),
                            input_dtype='int32', num_classes=vocab, label_names=[], num_examples={},
                            extra={'model_fields': {'vocab_size': vocab}})

  def train_batch(self, step, batch_size, process_index=0, process_count=1):
    import numpy as np
    t = np.random.default_rng([7, step]).integers(1, self.vocab, (batch_size, self.seq_len + 1), dtype=np.int32)
    return {'inputs': t[:, :-1], 'labels': t[:, 1:]}


def plain_cnn_runner(exp, batches):
  """maasjax's step for the CNN as it was written before this work (nn.Conv + nn.avg_pool everywhere,
  XLA's default fusions): the same task, optimizer, mesh and compile_steps, only the model differs."""
  import dataclasses
  import flax.linen as nn
  import jax.numpy as jnp
  from maasjax import sharding
  from maasjax.train.steps import compile_steps

  class PlainCNN(nn.Module):
    num_classes: int
    features: tuple = (32, 64)
    dense: int = 256

    @nn.compact
    def __call__(self, x, train: bool = False):
      for width in self.features:
        x = nn.avg_pool(nn.relu(nn.Conv(width, kernel_size=(3, 3))(x)), window_shape=(2, 2), strides=(2, 2))
      x = nn.relu(nn.Dense(self.dense)(jnp.reshape(x, (x.shape[0], -1))))
      return nn.Dense(self.num_classes)(x)

  model = PlainCNN(exp.model.num_classes, tuple(exp.model.features), exp.model.dense)
  steps = compile_steps(model, exp.task, exp.tx, int(exp.config.seed), exp.mesh, sharding.plan(exp.config))
  return JaxRunner(dataclasses.replace(exp, model=model, steps=steps), batches)


def build(workload: str, dispatch: str = 'experiment', num_batches: int = 4):
  """(unit, items per step, {name: JaxRunner}, torch model factory, torch batches) for one workload.
  dispatch: the experiment's config.cpu_async_dispatch (as `maasjax train` runs it), or 'true' / 'false'."""
  import numpy as np
  import torch
  from maasjax import parallel
  from maasjax.config import load_config
  from maasjax.train.loop import setup
  import torch_models

  def experiment(name, overrides, dataset=None, mock=0):
    if dispatch != 'experiment':
      overrides = overrides + [('cpu_async_dispatch', dispatch)]
    config = load_config(os.path.join(ROOT, 'experiments', f'{name}.py'), OPTIMIZER_OVERRIDES + overrides)
    parallel.apply_cpu_dispatch(config)  # before the CPU backend starts, as `maasjax train` does
    if mock:
      import tensorflow_datasets as tfds
      with tfds.testing.mock_data(num_examples=mock):
        return config, setup(config)
    return config, setup(config, dataset)

  if workload == 'transformer_lm':
    c = LM
    overrides = [('model.num_layers', str(c['layers'])), ('model.emb_dim', str(c['d'])),
                 ('model.num_heads', str(c['heads'])), ('model.mlp_dim', str(c['mlp'])), ('model.dropout', '0.0'),
                 ('model.attention_window', '0'), ('model.max_len', str(c['seq'])),
                 ('dataset.seq_len', str(c['seq'])), ('batch_size', str(c['batch']))]
    config, exp = experiment('char_lm', overrides, RandomTokens(c['seq'], c['vocab']))
    make_model = lambda: torch_models.DecoderLM(c['vocab'], c['layers'], c['d'], c['heads'], c['mlp'])
    to_torch = lambda b: (torch.from_numpy(b['inputs'].astype(np.int64)), torch.from_numpy(b['labels'].astype(np.int64)))
    unit, items = 'tokens/s', c['batch'] * c['seq']
  else:
    name = 'mnist_cnn' if workload == 'mnist_cnn' else 'cifar10_resnet'
    config, exp = experiment(name, [('batch_size', '128')], mock=512)
    info = exp.dataset.info
    if workload == 'mnist_cnn':
      make_model = lambda: torch_models.CNN(info.input_shape[-1], info.input_shape[0], info.input_mean, info.input_std,
                                            tuple(config.model.features), config.model.dense, info.num_classes)
    else:
      make_model = lambda: torch_models.ResNet(info.input_shape[-1], info.input_mean, info.input_std,
                                               tuple(config.model.stage_sizes), config.model.width, info.num_classes)
    to_torch = lambda b: (torch.from_numpy(np.ascontiguousarray(b['inputs'].transpose(0, 3, 1, 2))),
                          torch.from_numpy(b['labels'].astype(np.int64)))
    unit, items = 'examples/s', config.batch_size
  local = [exp.dataset.train_batch(s, config.batch_size) for s in range(num_batches)]
  jax_batches = [parallel.global_batch(exp.mesh, b, exp.steps.batch_sharding) for b in local]
  runner = JaxRunner(exp, jax_batches)
  jax_runners = {'maasjax': runner}
  if workload == 'mnist_cnn':
    jax_runners['maasjax_plain'] = plain_cnn_runner(exp, jax_batches)

  def torch_model():
    model = make_model()
    model.load_from_flax(runner.params)
    return model
  return unit, items, jax_runners, torch_model, [to_torch(b) for b in local]


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / statistics.median(times) / 1e9


def serve_worker(workload: str, framework: str, dispatch: str = 'experiment') -> None:
  """One framework's side of a workload, alone in this process: build it, report the first loss (and for
  maasjax the step's FLOPs), then run the steps the parent asks for and report the seconds they took."""
  import warnings
  warnings.filterwarnings('ignore')
  import absl.logging
  absl.logging.set_verbosity(absl.logging.ERROR)
  unit, items, jax_runners, torch_model, torch_batches = build(workload, dispatch)
  if framework.startswith('torch'):
    runner = TorchRunner(torch_model(), torch_batches, compiled=(framework == 'torch_compile'))
  else:
    runner = jax_runners[framework]
  first = runner.run(1)[0]
  runner.run(2)  # warm-up past lazy allocation and recompiles, then time two steps to size the rounds
  t0 = time.perf_counter()
  runner.run(2)
  info = dict(unit=unit, items=items, first_loss=first, per_step=(time.perf_counter() - t0) / 2)
  if framework == 'maasjax':
    info['flops'] = runner.flops_per_step()
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    runner.run(1)  # untimed: the caches and pages the other framework's turn displaced
    t0 = time.perf_counter()
    runner.run(int(line))
    print(json.dumps({'seconds': time.perf_counter() - t0}), flush=True)


class Worker:
  """A worker process (`serve_worker`) the parent drives over its stdin/stdout."""

  def __init__(self, workload: str, framework: str, allocator: str, dispatch: str):
    import subprocess
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--worker',
                                  f'{workload}:{framework}:{dispatch}', '--allocator', allocator],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

  def reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f'a benchmark worker exited (status {self.proc.wait()}); its error is above')
    return json.loads(line)

  def run(self, steps: int) -> float:
    self.proc.stdin.write(f'{steps}\n')
    self.proc.stdin.flush()
    return self.reply()['seconds']

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def bench(workload: str, rounds: int, round_s: float, frameworks: list[str], allocator: str, dispatch: str,
          log) -> dict:
  """Each framework in its own process, the processes taking turns: one framework's threads never compete
  with the other's (in one process, torch's OpenMP threads and XLA's thread pool slowed each other by up to
  1.9x), while alternating keeps the comparison fair under this VM's drifting speed."""
  t0 = time.perf_counter()
  names = [fw for fw in frameworks if workload == 'mnist_cnn' or fw != 'maasjax_plain']
  workers, info = {}, {}
  for name in names:  # built one at a time: compilation does not overlap another's timing
    workers[name] = Worker(workload, name, allocator, dispatch)
    info[name] = workers[name].reply()
  unit, items = info[names[0]]['unit'], info[names[0]]['items']
  log(f'{workload}: first-step loss ' + ', '.join(f'{k} {v["first_loss"]:.5f}' for k, v in info.items()) +
      f' (setup + compile {time.perf_counter() - t0:.0f} s)')
  steps = {name: max(2, round(round_s / v['per_step'])) for name, v in info.items()}
  rates: dict[str, list[float]] = {name: [] for name in names}
  for i in range(rounds):
    for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order every round
      time.sleep(0.3)  # the previous framework's threads stop spinning
      rates[name].append(steps[name] * items / workers[name].run(steps[name]))
  for w in workers.values():
    w.close()
  result = {'workload': workload, 'unit': unit}
  for name in ('maasjax', 'torch', 'torch_compile', 'maasjax_plain'):
    if name in rates or name != 'maasjax_plain':
      result[name] = statistics.median(rates[name]) if name in rates else None
  flops = info['maasjax']['flops'] if 'maasjax' in info else 0.0
  result.update(first_loss={k: v['first_loss'] for k, v in info.items()}, rounds=rounds,
                spread={k: [min(v), max(v)] for k, v in rates.items()}, gflop_per_step=flops / 1e9,
                maasjax_gflops=flops / 1e9 * result['maasjax'] / items if result['maasjax'] else 0.0)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='3 rounds of ~1 s instead of 7 of ~2 s')
  p.add_argument('--rounds', type=int, default=0)
  p.add_argument('--round_s', type=float, default=0.0)
  p.add_argument('--workloads', default='mnist_cnn,resnet,transformer_lm')
  p.add_argument('--frameworks', default='maasjax,torch,torch_compile,maasjax_plain',
                 help='maasjax_plain: the CNN as written before (plain convs and pooling, default XLA fusions)')
  p.add_argument('--allocator', default='maasjax', choices=list(ALLOCATORS))
  p.add_argument('--cpu_async_dispatch', default='experiment', choices=['experiment', 'true', 'false'],
                 help="maasjax's CPU dispatch: each experiment's config.cpu_async_dispatch (as `maasjax train` runs), "
                      'or forced')
  p.add_argument('--json', action='store_true', help='print one JSON object per workload per line (only those)')
  p.add_argument('--worker', help=argparse.SUPPRESS)  # WORKLOAD:FRAMEWORK, run by bench() in a child process
  args = p.parse_args(argv)
  reexec_with_allocator(args.allocator)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, ROOT)
  if args.worker:
    serve_worker(*args.worker.split(':'))
    return 0
  rounds = args.rounds or (3 if args.quick else 7)
  round_s = args.round_s or (1.0 if args.quick else 2.0)
  log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))

  import warnings
  warnings.filterwarnings('ignore')
  import absl.logging
  absl.logging.set_verbosity(absl.logging.ERROR)
  import jax
  import torch
  load = os.getloadavg()
  log(f'machine: {platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; '
      f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); allocator '
      f'{args.allocator} {ALLOCATORS[args.allocator]}; XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; '
      f'maasjax cpu_async_dispatch: {args.cpu_async_dispatch}')
  frameworks = args.frameworks.split(',')
  results = []
  for workload in args.workloads.split(','):
    r = bench(workload, rounds, round_s, frameworks, args.allocator, args.cpu_async_dispatch, log)
    results.append(r)
    if args.json:
      print(json.dumps(r), flush=True)
  gemm = matmul_gflops()
  load = os.getloadavg()
  log(f'2048x2048 fp32 matmul (jnp): {gemm:.0f} GFLOP/s; load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')
  log(f'{"workload":<15} {"unit":<11} {"maasjax":>9} {"torch":>9} {"compile":>9} {"mj/torch":>8} {"mj/comp":>8} '
      f'{"GFLOP/s":>8} {"%matmul":>7}')
  fmt = lambda v: f'{v:>9.0f}' if v else f'{"-":>9}'
  ratio = lambda a, b: f'{a / b:>8.2f}' if a and b else f'{"-":>8}'
  for r in results:
    log(f'{r["workload"]:<15} {r["unit"]:<11} {fmt(r["maasjax"])} {fmt(r["torch"])} {fmt(r["torch_compile"])} '
        f'{ratio(r["maasjax"], r["torch"])} {ratio(r["maasjax"], r["torch_compile"])} '
        f'{r["maasjax_gflops"]:>8.1f} {100 * r["maasjax_gflops"] / gemm:>6.0f}%')
  for r in results:
    log(f'{r["workload"]}: per-round range ' + ', '.join(f'{k} {lo:.0f}-{hi:.0f}' for k, (lo, hi) in r['spread'].items()))
  for r in results:
    if r.get('maasjax_plain'):
      log(f'{r["workload"]}: maasjax {r["maasjax"]:.0f} vs the plain formulation {r["maasjax_plain"]:.0f} '
          f'{r["unit"]}: {r["maasjax"] / r["maasjax_plain"]:.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
