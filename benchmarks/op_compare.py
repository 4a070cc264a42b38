r"""Where the train steps' gap to PyTorch lies: the steps' largest single ops, XLA:CPU against PyTorch, alone.

  .venv/bin/python benchmarks/op_compare.py

Each op at the shape it has in benchmarks/train_step.py's workloads (fp32): the Transformer LM's MLP
matmuls (forward, and the two backward products: dX = dY W^T, dW = X^T dY) and the MNIST CNN's second
convolution (forward, and its input and kernel gradients). JAX side: the op jitted alone on device arrays;
PyTorch side: the same op eager (torch.mm, torch.nn.functional.conv2d and autograd's conv gradients).
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
  if os.environ.get('GLIBC_TUNABLES') != 'glibc.malloc.hugetlb=1':  # what maasjax train and train_step.py use
    os.environ['GLIBC_TUNABLES'] = 'glibc.malloc.hugetlb=1'
    os.execv(sys.executable, [sys.executable] + sys.argv)
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
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
  fwd = jax.jit(conv)
  _, vjp = jax.vjp(conv, jx, jw)
  grad_x = jax.jit(lambda dy: jax.vjp(conv, jx, jw)[1](dy)[0])
  grad_w = jax.jit(lambda dy: jax.vjp(conv, jx, jw)[1](dy)[1])
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
