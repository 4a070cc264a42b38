"""The faster formulations compute what the plain ones do: equal values and gradients (float tolerance),
the same parameter trees; the CNN's XLA options reach its train step; batches prefetched in step order;
`maasjax train` re-executes itself with the fast allocator."""
import json
import os
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from maasjax.cli import FAST_ALLOCATOR_ENV
from maasjax.models.cnn import CNN, avg_pool_2x2, shifted_slice_conv
from maasjax.models.ops import TrainDense, add_bias, training_dot_general
from maasjax.models.transformer import DecoderLM, NEG_INF, attention_with_dropout, rotate
from maasjax.train.prefetch import Prefetcher

TOL = dict(rtol=2e-5, atol=2e-5)


def close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or TOL))


@pytest.mark.parametrize('channels,kernel', [(1, 3), (3, 3), (2, 5)])
def test_shifted_slice_conv_equals_convolution_values_and_gradients(channels, kernel):
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 9, 7, channels))
  w = jax.random.normal(kk, (kernel, kernel, channels, 6))
  b = jax.random.normal(kb, (6,))

  def plain(x, w, b):
    return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b[None, None, None]

  loss = lambda f: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2)))
  close(loss(shifted_slice_conv)(x, w, b), loss(plain)(x, w, b))


@pytest.mark.parametrize('bias_shape', [(6,), (3, 2)])
def test_add_bias_equals_broadcast_add_values_and_gradients(bias_shape):
  y = jax.random.normal(jax.random.key(4), (5, 4, 7, *bias_shape))
  b = jax.random.normal(jax.random.key(5), bias_shape)
  loss = lambda f: jax.jit(jax.value_and_grad(lambda y, b: jnp.sum(jnp.sin(f(y, b)) * y), argnums=(0, 1)))
  close(loss(add_bias)(y, b), loss(lambda y, b: y + jnp.reshape(b, (1, 1, 1, *bias_shape)))(y, b))
  # Its bias gradient is the matrix-vector product, not XLA's (slow on CPU) reduction over the rows.
  hlo = jax.jit(jax.grad(lambda b: jnp.sum(jnp.sin(add_bias(y, b))))).lower(b).as_text()
  assert 'dot_general' in hlo and 'reduce' not in hlo.replace('reduce_precision', '')


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims', [
    ((6, 5, 4), (4, 3), (((2,), (0,)), ((), ()))),  # nn.Dense over [B, L, D]
    ((6, 5, 2, 3), (2, 3, 7), (((2, 3), (0, 1)), ((), ()))),  # DenseGeneral(axis=(-2, -1)), the attention's out
    ((6, 4), (4, 2, 3), (((1,), (0,)), ((), ()))),  # DenseGeneral((heads, head_dim)), the q/k/v projections
    ((3, 4, 5), (3, 5, 2), (((2,), (1,)), ((0,), (0,)))),  # a batched product: jax's own backward
])
def test_training_dot_general_equals_dot_general_values_and_gradients(lhs_shape, rhs_shape, dims):
  lhs = jax.random.normal(jax.random.key(6), lhs_shape)
  rhs = jax.random.normal(jax.random.key(7), rhs_shape)
  loss = lambda dot: jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(jnp.tanh(dot(a, b, dims)) * 1.5),
                                                argnums=(0, 1)))
  close(loss(training_dot_general)(lhs, rhs), loss(jax.lax.dot_general)(lhs, rhs))


@pytest.mark.parametrize('shape', [(6, 4), (3, 5, 4)])
def test_train_dense_has_dense_parameters_values_and_gradients(shape):
  x = jax.random.normal(jax.random.key(9), shape)
  plain, fast = nn.Dense(7), TrainDense(7)
  params = jax.jit(plain.init)(jax.random.key(0), x)
  close(jax.jit(fast.init)(jax.random.key(0), x), params, rtol=0, atol=0)  # same names, shapes and init
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1)))
  close(loss(fast)(params, x), loss(plain)(params, x))
  # Its bias gradient comes out of the kernel's product: no separate reduction over the rows.
  hlo = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(fast.apply(p, x))))).lower(params).as_text()
  assert 'reduce' not in hlo.replace('reduce_precision', '')


def test_transformer_trains_through_training_dot_general_and_infers_without_it():
  model = DecoderLM(vocab_size=16, num_layers=1, num_heads=2, emb_dim=8, mlp_dim=16, max_len=8, dropout=0.0)
  tokens = jnp.ones((2, 8), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens)['params']
  train_ops = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, tokens, train=True))(params))
  eval_ops = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, tokens))(params))
  # query, key, value, out (training_dot_general), wi, wo and the logits (TrainDense): each product with
  # its 2-D backward in training only.
  assert train_ops.count('custom_vjp_call') == 7 and 'custom_vjp_call' not in eval_ops
  # The rotary angles are materialised (behind a barrier) in training only.
  assert train_ops.count('optimization_barrier') == 2 and 'optimization_barrier' not in eval_ops


def test_rotary_with_materialized_angles_equals_the_fused_form():
  x = jax.random.normal(jax.random.key(8), (2, 6, 3, 8))
  positions = jnp.broadcast_to(jnp.arange(6)[None], (2, 6))
  loss = lambda m: jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(rotate(x, positions, materialize_angles=m)))))
  close(loss(True)(x), loss(False)(x))


@pytest.mark.parametrize('size', [(8, 8), (7, 9)])
def test_avg_pool_as_reshape_equals_avg_pool(size):
  x = jax.random.normal(jax.random.key(1), (3, *size, 5))
  pool = lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.cos(f(x)))))
  close(pool(avg_pool_2x2)(x), pool(lambda x: nn.avg_pool(x, (2, 2), (2, 2)))(x))


class PlainCNN(nn.Module):
  """The CNN as written before: nn.Conv everywhere and nn.avg_pool (the reference)."""
  features: tuple = (32, 64)

  @nn.compact
  def __call__(self, x, train: bool = False):
    for width in self.features:
      x = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(256)(jnp.reshape(x, (x.shape[0], -1))))
    return nn.Dense(10)(x)


def test_cnn_same_parameters_and_gradients_as_the_plain_formulation():
  x = jax.random.normal(jax.random.key(2), (16, 28, 28, 1))
  y = jax.random.randint(jax.random.key(3), (16,), 0, 10)
  model, plain = CNN(num_classes=10), PlainCNN()
  params = jax.jit(model.init)(jax.random.key(0), x)['params']
  plain_params = jax.jit(plain.init)(jax.random.key(0), x)['params']
  # Same names, shapes and initial values: checkpoints and sharding rules are unaffected.
  assert jax.tree.structure(params) == jax.tree.structure(plain_params)
  close(params, plain_params, rtol=0, atol=0)

  def grads(m):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(m.apply({'params': p}, x, train=True), y).mean()
    return jax.jit(jax.value_and_grad(loss))(params)
  close(grads(model), grads(plain))
  # The slice form, add_bias and training_dot_general (the slice matmul, both Dense layers) really are what
  # training runs; inference keeps the convolutions and plain products.
  train_ops = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, x, train=True))(params))
  eval_ops = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, x))(params))
  assert train_ops.count('conv_general_dilated') == 1 and eval_ops.count('conv_general_dilated') == 2
  assert train_ops.count('custom_vjp_call') == 4 and 'custom_vjp_call' not in eval_ops


def test_cnn_train_step_compiles_without_ynnpack_fusions(config_factory):
  from maasjax.train.loop import setup
  config = config_factory('digits_cnn', batch_size=8)
  exp = setup(config)
  state = exp.steps.init()
  batch = jax.device_put(exp.dataset.train_batch(0, 8), exp.steps.batch_sharding)
  text = exp.steps.train_step.lower(state, batch).compile().as_text()
  assert '__ynn_fusion' not in text  # the fusion kind XLA:CPU gives this step without the option


def test_fused_attention_path_equals_explicit_softmax_path():
  tokens = jnp.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 8]], jnp.int32)  # left padding: fully masked rows
  small = dict(vocab_size=20, num_layers=2, num_heads=2, emb_dim=16, mlp_dim=32, max_len=8, dropout=0.0)
  fused = DecoderLM(attention_dropout=0.0, **small)
  # Dropout at 1e-9 takes the explicit path (softmax weights, then dropout) and drops nothing.
  explicit = DecoderLM(attention_dropout=1e-9, **small)
  params = jax.jit(fused.init)(jax.random.key(0), tokens)['params']
  labels = jnp.roll(tokens, -1, axis=1)

  def grads(m):
    def loss(p):
      logits = m.apply({'params': p}, tokens, train=True, rngs={'dropout': jax.random.key(1)})
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * (labels != 0))
    return jax.jit(jax.value_and_grad(loss))(params)
  close(grads(fused), grads(explicit))
  q, k, v = jax.random.normal(jax.random.key(4), (3, 2, 6, 2, 8))
  mask = jnp.tril(jnp.ones((6, 6), bool))[None].repeat(2, 0).at[0, :2].set(False)
  np.testing.assert_allclose(jax.nn.dot_product_attention(q, k, v, mask=mask[:, None]),
                             attention_with_dropout(q, k, v, mask, lambda p: p), **TOL)
  assert NEG_INF < -1e8


def test_prefetcher_builds_each_step_in_order_and_raises_errors_in_the_consumer():
  seen = []

  def make(step):
    seen.append(step)
    if step == 7:
      raise ValueError('bad batch 7')
    return {'step': step}
  p = Prefetcher(make, 3, 10, depth=2)
  assert [p.get(s)['step'] for s in range(3, 7)] == [3, 4, 5, 6]
  with pytest.raises(ValueError, match='bad batch 7'):
    p.get(7)
  p.close()
  assert seen == [3, 4, 5, 6, 7]  # the thread stopped at the failure
  with pytest.raises(ValueError, match='expected step 5'):
    Prefetcher(lambda s: s, 5, 9).get(6)
  inline = Prefetcher(lambda s: s * 10, 0, 3, depth=0)
  assert [inline.get(s) for s in range(3)] == [0, 10, 20]
  slow = Prefetcher(lambda s: time.sleep(0.05) or s, 0, 1000, depth=2)
  assert slow.get(0) == 0
  slow.close()  # stops a producer with steps left
  assert not slow._thread.is_alive()


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc tunables and /proc are Linux')
def test_maasjax_train_reexecutes_with_the_fast_allocator(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'MAASJAX_NO_REEXEC')}
  workdir = tmp_path / 'run'
  proc = subprocess.Popen([sys.executable, '-m', 'maasjax.cli', 'train', '--config', 'experiments/digits_cnn.py',
                           '--workdir', str(workdir), '--config.num_train_steps=100000', '--config.progress_bar=false'],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 240
    while not (workdir / 'config.json').exists():  # written once setup is done: the process is the trainer
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      assert time.time() < deadline
      time.sleep(0.2)
    with open(f'/proc/{proc.pid}/environ', 'rb') as f:  # same pid: os.execv replaced the process image
      environ = f.read()
    # glibc splits the variable in place at its ':'s as it parses the tunables
    assert b'\0GLIBC_TUNABLES=' + FAST_ALLOCATOR_ENV['GLIBC_TUNABLES'].replace(':', '\0').encode() + b'\0' in environ
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# A step's scratch buffer: malloc'ed, written, freed, again (on the main thread and on a worker thread, where
# XLA's runtime allocates); prints the page faults per cycle after the first.
_FAULTS_PER_STEP = r"""
import ctypes, json, resource, threading
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
def faults(n=48 << 20, cycles=4):
  def cycle():
    p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
  cycle()
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(cycles):
    cycle()
  return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / cycles
out = {'main': faults()}
t = threading.Thread(target=lambda: out.update(thread=faults())); t.start(); t.join()
print(json.dumps(out))
"""


@pytest.mark.skipif(sys.platform != 'linux', reason='glibc tunables are Linux')
def test_the_cli_allocator_reuses_freed_step_buffers_without_page_faults():
  def faults(tunables):
    env = {**os.environ, 'GLIBC_TUNABLES': tunables}
    return json.loads(subprocess.run([sys.executable, '-c', _FAULTS_PER_STEP], env=env, capture_output=True,
                                     text=True, check=True).stdout)
  ours = faults(FAST_ALLOCATOR_ENV['GLIBC_TUNABLES'])
  assert ours['main'] < 20 and ours['thread'] < 20, ours
  huge_pages_only = faults('glibc.malloc.hugetlb=1')  # what the CLI set before: each cycle faults again
  assert huge_pages_only['main'] > 20, huge_pages_only


_DISPATCH = r"""
import json, jax
from maasjax import parallel
from maasjax.config import load_config
seen = [jax.config.values['jax_cpu_enable_async_dispatch']]
parallel.apply_cpu_dispatch(load_config('experiments/mnist_cnn.py'))  # sets cpu_async_dispatch = False
seen.append(jax.config.values['jax_cpu_enable_async_dispatch'])
jax.devices()  # the CPU backend starts: later changes cannot apply, and apply_cpu_dispatch says so
parallel.apply_cpu_dispatch(load_config('experiments/digits_cnn.py'))
seen.append(jax.config.values['jax_cpu_enable_async_dispatch'])
print(json.dumps(seen))
"""


def test_an_experiments_cpu_dispatch_is_set_before_the_backend_starts():
  proc = subprocess.run([sys.executable, '-c', _DISPATCH], cwd=ROOT, capture_output=True, text=True, check=True,
                        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  lines = proc.stdout.strip().splitlines()
  assert json.loads(lines[-1]) == [True, False, False]
  assert lines[0].startswith('maasjax: config.cpu_async_dispatch=True takes effect in a fresh process only')
