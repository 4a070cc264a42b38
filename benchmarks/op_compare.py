r"""Where the train steps' gap to PyTorch lies: the steps' largest single ops, XLA:CPU against PyTorch, alone.

  .venv/bin/python benchmarks/op_compare.py

Each op at the shape it has in benchmarks/train_step.py's workloads (fp32): the Transformer LM's MLP
matmuls (forward, and the two backward products: dX = dY W^T, dW = X^T dY) and the MNIST CNN's second
convolution (forward, and its input and kernel gradients, compiled with the XLA options the CNN's step
uses), its first dense layer's input gradient (a transposed operand), and two bias gradients (a sum over
an activation's rows, as jnp.sum and as a matrix-vector product). JAX side: the op jitted alone on device
arrays; PyTorch side: the same op eager (torch.mm, torch.nn.functional.conv2d, autograd's conv gradients,
Tensor.sum).
Interleaved rounds, medians, GFLOP/s. Run it on a quiet machine, under the allocator train_step.py uses.
"""
from __future__ import annotations

import os
import statistics
import sys
import time


def timed(fn, reps: int) -> float:
  fn()
  t0 = time.perf_counter()
  for _ in range(reps):
    fn()
  return (time.perf_counter() - t0) / reps


def main() -> None:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from maasjax.cli import FAST_ALLOCATOR_ENV  # what maasjax train and train_step.py use
  if os.environ.get('GLIBC_TUNABLES') != FAST_ALLOCATOR_ENV['GLIBC_TUNABLES']:
    os.environ.update(FAST_ALLOCATOR_ENV)
    os.execv(sys.executable, [sys.executable] + sys.argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from maasjax.models.cnn import CPU_COMPILER_OPTIONS
  from maasjax.models.ops import column_sum
  rng = np.random.default_rng(0)
  arr = lambda *shape: rng.standard_normal(shape, dtype=np.float32)

  cases = []  # (name, flops, jax fn, torch fn)
  tokens, d, mlp = 16 * 128, 256, 1024  # the LM: batch 16 x seq 128, d 256, MLP 1024
  for name, (m, k, n) in {'LM MLP up, forward [2048x256]@[256x1024]': (tokens, d, mlp),
                          'LM MLP up, dX [2048x1024]@[1024x256]': (tokens, mlp, d),
                          'LM MLP up, dW [256x2048]@[2048x1024]': (d, tokens, mlp)}.items():
    a, b = arr(m, k), arr(k, n)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x, y: x @ y)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    cases.append((name, 2 * m * k * n, lambda f=f, ja=ja, jb=jb: f(ja, jb).block_until_ready(),
                  lambda ta=ta, tb=tb: torch.mm(ta, tb)))

  # The CNN's second conv: 128 x 14 x 14 x 32 -> 64 channels, 3x3, SAME (MNIST after the first pool).
  x, w = arr(128, 14, 14, 32), arr(3, 3, 32, 64) * 0.1
  dims = ('NHWC', 'HWIO', 'NHWC')
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dims)
  jx, jw = jnp.asarray(x), jnp.asarray(w)
  dy = jnp.asarray(arr(128, 14, 14, 64))
  step_jit = lambda f: jax.jit(f, compiler_options=CPU_COMPILER_OPTIONS)  # as the CNN's train step compiles
  fwd = step_jit(conv)
  grad_x = step_jit(lambda dy: jax.vjp(conv, jx, jw)[1](dy)[0])
  grad_w = step_jit(lambda dy: jax.vjp(conv, jx, jw)[1](dy)[1])
  tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
  tdy = torch.from_numpy(np.ascontiguousarray(np.asarray(dy).transpose(0, 3, 1, 2)))
  conv_flops = 2 * 128 * 14 * 14 * 64 * 3 * 3 * 32
  cases.append(('CNN conv2, forward', conv_flops, lambda: fwd(jx, jw).block_until_ready(),
                lambda: torch.nn.functional.conv2d(tx, tw, padding=1)))
  cases.append(('CNN conv2, input gradient', conv_flops, lambda: grad_x(dy).block_until_ready(),
                lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, padding=1)))
  cases.append(('CNN conv2, kernel gradient', conv_flops, lambda: grad_w(dy).block_until_ready(),
                lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, padding=1)))

  # The CNN's first dense layer, input gradient: dY [128x256] @ W^T, W [3136x256] (a transposed operand).
  ddy, dw = arr(128, 256), arr(3136, 256)
  jddy, jdw, tddy, tdw = jnp.asarray(ddy), jnp.asarray(dw), torch.from_numpy(ddy), torch.from_numpy(dw)
  dense_dx = step_jit(lambda a, b: a @ b.T)
  cases.append(('CNN dense, dX [128x256]@[3136x256]^T', 2 * 128 * 256 * 3136,
                lambda: dense_dx(jddy, jdw).block_until_ready(), lambda: torch.mm(tddy, tdw.t())))
  # Bias gradients: a sum over every row of an activation gradient. XLA's reduction against the same sum as
  # a matrix-vector product (maasjax.models.ops.column_sum, what TrainConv's add_bias uses).
  for name, shape in {'CNN conv1 bias gradient, sum of [128,28,28,32] over rows': (128, 28, 28, 32),
                      'LM MLP bias gradient, sum of [16,128,1024] over rows': (16, 128, 1024)}.items():
    g = arr(*shape)
    jg, tg = jnp.asarray(g), torch.from_numpy(g)
    rows = tuple(range(len(shape) - 1))
    reduce_sum, as_product = step_jit(lambda g: jnp.sum(g, axis=rows)), step_jit(column_sum)
    flops = g.size  # one add per element
    cases.append((f'{name} (jnp.sum)', flops, lambda f=reduce_sum, jg=jg: f(jg).block_until_ready(),
                  lambda tg=tg, rows=rows: tg.sum(rows)))
    cases.append((f'{name} (ones @ g)', flops, lambda f=as_product, jg=jg: f(jg).block_until_ready(),
                  lambda tg=tg, rows=rows: tg.sum(rows)))

  times = {c[0]: ([], []) for c in cases}
  for _ in range(7):
    for name, _, jf, tf in cases:
      times[name][0].append(timed(jf, 20))
      times[name][1].append(timed(tf, 20))
  print(f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), load '
        f'{os.getloadavg()[0]:.2f}\n')
  print('| op | XLA:CPU ms | PyTorch ms | XLA GFLOP/s | PyTorch GFLOP/s | XLA / PyTorch speed |')
  print('|---|---|---|---|---|---|')
  for name, flops, _, _ in cases:
    j, t = statistics.median(times[name][0]), statistics.median(times[name][1])
    print(f'| {name} | {j * 1e3:.3f} | {t * 1e3:.3f} | {flops / j / 1e9:.0f} | {flops / t / 1e9:.0f} | {t / j:.2f}x |')


if __name__ == '__main__':
  main()
