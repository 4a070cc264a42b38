"""Train-step throughput of the digits CNN and the MNIST CNN: steps/s and examples/s (and a bare
flax + optax step of the same MNIST CNN, for reference).

  .venv/bin/python benchmarks/train_throughput.py [--steps 200] [--repeats 3]

Times the same jit-compiled, donated train step the loop runs (batch already on device,
compilation excluded), best of --repeats. MNIST uses tfds mock data of MNIST's shape and dtype
(throughput does not depend on pixel values), so it runs without the dataset.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maasjax import parallel  # noqa: E402
from maasjax.config import load_config  # noqa: E402
from maasjax.train.loop import setup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_steps(advance, carry, steps: int, repeats: int) -> tuple[float, float]:
  """(first call incl. compile, best of `repeats` runs of `steps` calls) in seconds, for
  `carry = advance(carry, step_index)`; waits for the device after each run."""
  t0 = time.perf_counter()
  carry = jax.block_until_ready(advance(carry, 0))
  compile_s = time.perf_counter() - t0
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    for s in range(steps):
      carry = advance(carry, s)
    jax.block_until_ready(carry)
    best = min(best, time.perf_counter() - t0)
  return compile_s, best


def bench(config_name: str, batch_size: int, steps: int, repeats: int) -> dict:
  config = load_config(os.path.join(ROOT, 'experiments', f'{config_name}.py'),
                       [('batch_size', str(batch_size))])
  if config.dataset.name == 'digits':
    exp = setup(config)
  else:
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=max(4 * batch_size, 512)):
      exp = setup(config)
  state = exp.steps.init()
  batches = [parallel.global_batch(exp.mesh, exp.dataset.train_batch(s, batch_size)) for s in range(8)]
  compile_s, best = time_steps(lambda c, s: exp.steps.train_step(c[0], batches[s % len(batches)]),
                               (state, None), steps, repeats)
  return {'config': config_name, 'input_shape': list(exp.dataset.info.input_shape), 'batch_size': batch_size,
          'steps_per_second': steps / best, 'examples_per_second': steps * batch_size / best,
          'first_step_incl_compile_s': compile_s}


def plain_flax_mnist(steps: int, repeats: int, batch_size: int = 128) -> dict:
  """The same MNIST CNN and optimizer as a bare flax + optax step (no framework), for reference:
  the gap to `mnist_cnn` is what maasjax's step adds."""
  import flax.linen as nn
  import optax

  class PlainCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      for features in (32, 64):
        x = nn.avg_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), (2, 2))
      return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape((x.shape[0], -1)))))

  model, tx = PlainCNN(), optax.sgd(0.1, momentum=0.9)
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch_size, 28, 28, 1))
  y = jax.random.randint(jax.random.PRNGKey(2), (batch_size,), 0, 10)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': p}, x), y).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  compile_s, best = time_steps(lambda c, s: step(c[0], c[1]), (params, opt, None), steps, repeats)
  return {'config': 'plain flax', 'input_shape': [28, 28, 1], 'batch_size': batch_size,
          'steps_per_second': steps / best, 'examples_per_second': steps * batch_size / best,
          'first_step_incl_compile_s': compile_s}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--json', help='also write the results to this file')
  args = p.parse_args(argv)
  results = [bench('digits_cnn', 64, args.steps, args.repeats),
             bench('mnist_cnn', 128, args.steps, args.repeats),
             plain_flax_mnist(args.steps, args.repeats)]
  machine = f'{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}'
  print(f'machine: {machine}; GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}')
  print(f'{"config":<12} {"input":<12} {"batch":>5} {"steps/s":>9} {"examples/s":>11} {"compile s":>10}')
  for r in results:
    print(f'{r["config"]:<12} {"x".join(map(str, r["input_shape"])):<12} {r["batch_size"]:>5} '
          f'{r["steps_per_second"]:>9.1f} {r["examples_per_second"]:>11.0f} {r["first_step_incl_compile_s"]:>10.2f}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'machine': machine, 'results': results}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
