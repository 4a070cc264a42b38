"""Transformer LM training throughput and model FLOPs utilisation (MFU) on the chip that is here.

  python3 benchmarks/lm_mfu.py                      # size picked for the platform (cpu/gpu/tpu)
  python3 benchmarks/lm_mfu.py --size gpu --steps 30 --dtype bfloat16 [--remat] [--peak_tflops 989]

Self-contained on purpose (jax, flax, optax and numpy only) so that it runs on a bare accelerator
machine: it loads maasjax/models/transformer.py by file path (not the package, whose other models
need more) and trains it with a step of the same shape as maasjax.train.steps: value_and_grad ->
AdamW -> apply_updates, one jit with the state donated, the batch split over every device on a
'data' mesh axis. Tokens are uniform random ids (speed does not depend on them); dropout is off.

MFU = achieved model FLOP/s / the chip's peak dense bf16 FLOP/s (fp32 peak on CPU, where bf16 is
not faster). Model FLOPs per token = 6 x (matmul parameters: everything but the embedding table,
norms and biases) + 12 x layers x seq_len x emb_dim (attention scores and weighted values, forward
and backward; PaLM, appendix B). Rematerialisation's recomputation is not counted (it is not model
FLOPs). The last line is one JSON object, `RESULT {...}`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> model and batch shape. 'gpu'/'tpu' are GPT-2-small-shaped (135.4M parameters, 110.1M in matmuls).
SIZES = {
    'cpu': dict(num_layers=4, emb_dim=256, num_heads=4, mlp_dim=1024, vocab_size=256, seq_len=128, batch_per_device=16),
    'gpu': dict(num_layers=12, emb_dim=768, num_heads=12, mlp_dim=3072, vocab_size=32768, seq_len=1024,
                batch_per_device=16),
    'tpu': dict(num_layers=12, emb_dim=768, num_heads=12, mlp_dim=3072, vocab_size=32768, seq_len=1024,
                batch_per_device=16),
}
DEFAULT_STEPS = {'cpu': 10, 'gpu': 30, 'tpu': 30}

# Peak dense bf16 FLOP/s per chip (vendor figures, no sparsity), matched against device_kind.
PEAK_BF16 = [
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('H800', 989e12), ('GH200', 989e12),
    ('A100', 312e12), ('A800', 312e12), ('L40S', 362e12), ('L4', 121e12), ('A10G', 70e12), ('A10', 125e12),
    ('V100', 125e12), ('TPU v6 lite', 918e12), ('TPU v6e', 918e12), ('TPU v5p', 459e12),
    ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v4', 275e12), ('TPU v3', 123e12),
]
# This machine's CPU: 2 cores x 3.66 GHz x 32 fp32 FLOP/cycle (AVX-512 FMA) = 234 GFLOP/s.
CPU_PEAK_DEFAULT = 2 * 3.66e9 * 32


def load_transformer():
  path = os.path.join(ROOT, 'maasjax', 'models', 'transformer.py')
  spec = importlib.util.spec_from_file_location('maasjax_transformer_standalone', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while building the class
  spec.loader.exec_module(module)
  return module


def chip_peak(device, override_tflops: float | None, cpu_peak: float) -> tuple[float, str]:
  if override_tflops:
    return override_tflops * 1e12, f'given: {override_tflops} TFLOP/s'
  if device.platform == 'cpu':
    return cpu_peak, f'CPU fp32 peak {cpu_peak / 1e9:.0f} GFLOP/s (--cpu_peak_gflops; bf16 is not faster on CPU)'
  kind = device.device_kind
  for key, peak in PEAK_BF16:
    if key.lower() in kind.lower():
      return peak, f'{key} dense bf16 {peak / 1e12:.0f} TFLOP/s'
  raise SystemExit(f'unknown chip {kind!r}: pass --peak_tflops (its dense bf16 peak) to get an MFU')


def model_flops_per_token(params, cfg: dict) -> tuple[float, int]:
  import jax
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  matmul = 0
  for path, leaf in flat:
    name = '/'.join(str(getattr(k, 'key', k)) for k in path)
    if name.endswith('kernel'):  # Dense/DenseGeneral weights; the embedding is a lookup, not a matmul
      matmul += leaf.size
  attention = 12 * cfg['num_layers'] * cfg['seq_len'] * cfg['emb_dim']
  return 6.0 * matmul + attention, matmul


def calibrate_matmul(dtype_name: str, platform_name: str) -> float:
  """FLOP/s of one large matmul in the compute dtype: what this chip gives a plain GEMM."""
  import jax
  import jax.numpy as jnp
  n = 8192 if platform_name != 'cpu' else 1024
  dtype = jnp.bfloat16 if (dtype_name == 'bfloat16' and platform_name != 'cpu') else jnp.float32
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  reps = 10 if platform_name != 'cpu' else 3
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', default='auto', choices=['auto', *SIZES])
  p.add_argument('--steps', type=int, default=0, help='timed steps (default: 10 on CPU, 30 on GPU/TPU)')
  p.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'], help='compute dtype')
  p.add_argument('--remat', action='store_true', help='recompute each block in the backward pass')
  p.add_argument('--batch_per_device', type=int, default=0)
  p.add_argument('--peak_tflops', type=float, default=0.0, help='override the chip peak')
  p.add_argument('--cpu_peak_gflops', type=float, default=CPU_PEAK_DEFAULT / 1e9)
  p.add_argument('--no_calibrate', action='store_true', help='skip the single-matmul reference')
  p.add_argument('--init_on', default='host', choices=['host', 'device'],
                 help='where jit(init) compiles and runs (host: seconds; device: minutes on a GPU)')
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  devices = jax.devices()
  plat = devices[0].platform
  size = args.size if args.size != 'auto' else {'gpu': 'gpu', 'tpu': 'tpu'}.get(plat, 'cpu')
  cfg = dict(SIZES[size])
  if args.batch_per_device:
    cfg['batch_per_device'] = args.batch_per_device
  steps = args.steps or DEFAULT_STEPS[size]
  batch = cfg['batch_per_device'] * len(devices)
  seq = cfg['seq_len']
  peak, peak_note = chip_peak(devices[0], args.peak_tflops, args.cpu_peak_gflops * 1e9)
  print(f'host: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, '
        f'jax {jax.__version__}')
  print(f'devices: {len(devices)} x {devices[0].device_kind} ({plat}); peak: {peak_note}')

  tf = load_transformer()
  model = tf.DecoderLM(vocab_size=cfg['vocab_size'], num_layers=cfg['num_layers'], num_heads=cfg['num_heads'],
                       emb_dim=cfg['emb_dim'], mlp_dim=cfg['mlp_dim'], dropout=0.0, max_len=seq, remat=args.remat,
                       dtype=args.dtype)
  tx = optax.adamw(3e-4, weight_decay=0.01)
  mesh = Mesh(np.asarray(devices), ('data',))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))

  def init():
    params = model.init(jax.random.key(0), jnp.ones((1, seq), jnp.int32))['params']
    return params, tx.init(params)

  def train_step(state, tokens_BxT1):
    params, opt_state = state

    def loss_fn(params):
      logits_BxTxV = model.apply({'params': params}, tokens_BxT1[:, :-1], train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, tokens_BxT1[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  t0 = time.perf_counter()
  if args.init_on == 'host':
    # XLA:GPU took 3 min 11 s to compile this jit(init) on an H200 (jax 0.11.2; the train step took
    # ~35 s); on the host CPU it compiles in seconds. Parameters are then copied to the devices.
    with jax.default_device(jax.devices('cpu')[0]):
      state = jax.jit(init)()
    state = jax.device_put(state, replicated)
  else:
    state = jax.jit(init, out_shardings=replicated)()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  params_abs = state[0]
  flops_per_token, matmul_params = model_flops_per_token(params_abs, cfg)
  num_params = sum(x.size for x in jax.tree.leaves(params_abs))
  step = jax.jit(train_step, in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                 donate_argnums=0)
  rng = np.random.default_rng(0)
  batches = [jax.device_put(rng.integers(1, cfg['vocab_size'], (batch, seq + 1), dtype=np.int32), batch_sharding)
             for _ in range(4)]
  t1 = time.perf_counter()
  state, loss = step(state, batches[0])
  first_loss = float(loss)
  compile_s = time.perf_counter() - t1
  for i in range(2):  # warm-up past any lazy allocation
    state, loss = step(state, batches[(i + 1) % 4])
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for i in range(steps):
    state, loss = step(state, batches[i % 4])
  last_loss = float(loss)  # waits for the last step
  elapsed = time.perf_counter() - t0

  tokens_per_s = steps * batch * seq / elapsed
  achieved = tokens_per_s * flops_per_token
  mfu = achieved / (peak * len(devices))
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') else None
  peak_mem = (stats or {}).get('peak_bytes_in_use')
  result = {
      'device_kind': devices[0].device_kind, 'platform': plat, 'num_devices': len(devices), 'size': size,
      'dtype': args.dtype, 'remat': args.remat, 'num_params': int(num_params), 'matmul_params': int(matmul_params),
      'layers': cfg['num_layers'], 'emb_dim': cfg['emb_dim'], 'seq_len': seq, 'global_batch': batch,
      'steps': steps, 'step_time_s': elapsed / steps, 'tokens_per_s': tokens_per_s,
      'tokens_per_s_per_device': tokens_per_s / len(devices), 'model_flops_per_token': flops_per_token,
      'model_tflops_per_s_per_device': achieved / len(devices) / 1e12, 'peak_tflops_per_device': peak / 1e12,
      'mfu': mfu, 'init_s': init_s, 'init_on': args.init_on, 'first_step_incl_compile_s': compile_s, 'loss_first': first_loss, 'loss_last': last_loss,
      'peak_device_memory_gib': peak_mem / 2**30 if peak_mem else None, 'jax': jax.__version__,
  }
  if not args.no_calibrate:
    del state, batches
    gemm = calibrate_matmul(args.dtype, plat)
    result['single_matmul_tflops'] = gemm / 1e12
    result['mfu_vs_single_matmul'] = achieved / len(devices) / gemm
  print(f'model: Transformer LM, {cfg["num_layers"]} layers, d={cfg["emb_dim"]}, {cfg["num_heads"]} heads, '
        f'mlp {cfg["mlp_dim"]}, vocab {cfg["vocab_size"]}; {num_params / 1e6:.1f}M params; {args.dtype} compute, '
        f'float32 params and AdamW state{"; remat" if args.remat else ""}')
  print(f'batch: {batch} x {seq} tokens ({cfg["batch_per_device"]} per device); {steps} timed steps; '
        f'loss {first_loss:.3f} -> {last_loss:.3f}')
  print(f'init (compile + run, on {args.init_on}): {init_s:.1f} s; first step (compile + run): {compile_s:.1f} s; '
        f'step: {1e3 * elapsed / steps:.1f} ms')
  print(f'tokens/s: {tokens_per_s:,.0f} ({tokens_per_s / len(devices):,.0f} per device)')
  print(f'model FLOPs/token: {flops_per_token / 1e6:.1f} M; achieved {achieved / len(devices) / 1e12:.3f} '
        f'TFLOP/s per device')
  print(f'MFU: {100 * mfu:.1f}% of {peak / 1e12:.3f} TFLOP/s' +
        (f'; a single {"bf16" if plat != "cpu" and args.dtype == "bfloat16" else "fp32"} matmul reaches '
         f'{result["single_matmul_tflops"]:.3f} TFLOP/s ({100 * result["mfu_vs_single_matmul"]:.1f}% of that)'
         if 'single_matmul_tflops' in result else ''))
  if peak_mem:
    print(f'peak device memory: {peak_mem / 2**30:.2f} GiB')
  print('RESULT ' + json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
