"""Per-device parameter and optimizer-state memory under each sharding preset, read from the arrays.

  .venv/bin/python benchmarks/scale_memory.py [--devices 8] [--json FILE]

Builds the real sharded state (`jit(init, out_shardings=...)` with the shardings `sharding.plan`
gives) of the Transformer LM and the MNIST CNN on N simulated CPU devices, then sums
`addressable_shards[0].data.nbytes` over parameters and AdamW state: the bytes device 0 holds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--json', help='also write the rows to this file')
  args = p.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  jax.config.update('jax_num_cpu_devices', args.devices)
  # Memory does not depend on the numbers; the classic counters compile ~20x faster on XLA:CPU.
  jax.config.update('jax_threefry_partitionable', False)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax.numpy as jnp
  import ml_collections
  import optax
  from maasjax import parallel, sharding
  from maasjax.models import build_model

  n = args.devices
  models = {
      # A GPT-2-small-shaped LM scaled down to fit 8 simulated replicas in host memory.
      'transformer_lm': ({'name': 'transformer_lm', 'vocab_size': 8192, 'num_layers': 6, 'num_heads': 8,
                          'emb_dim': 512, 'mlp_dim': 2048, 'max_len': 256}, jnp.ones((1, 16), jnp.int32)),
      'cnn': ({'name': 'cnn', 'num_classes': 10}, jnp.ones((1, 28, 28, 1), jnp.float32)),
  }
  layouts = [('replicate', {'data': n}), ('fsdp', {'fsdp': n}), ('tensor', {'model': n}),
             ('fsdp_tensor', {'fsdp': 2, 'model': n // 2})]
  rows = []
  for model_name, (model_cfg, example) in models.items():
    for preset, mesh_cfg in layouts:
      config = ml_collections.ConfigDict({'model': model_cfg, 'dtype': 'float32', 'mesh': mesh_cfg,
                                          'sharding': {'preset': preset, 'rules': ()}})
      model = build_model(config)
      tx = optax.adamw(1e-3)
      mesh = parallel.create_mesh(config.mesh)

      def init():
        params = model.init(jax.random.key(0), example)['params']
        return params, tx.init(params)

      params_abs, opt_abs = jax.eval_shape(init)
      rules = sharding.plan(config)(params_abs, mesh)
      out_sh = (parallel.param_shardings(params_abs, mesh, rules), parallel.param_shardings(opt_abs, mesh, rules))
      params, opt_state = jax.jit(init, out_shardings=out_sh)()
      per_device = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
      total = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
      rows.append({'model': model_name, 'preset': preset, 'mesh': mesh_cfg,
                   'num_params': int(sum(x.size for x in jax.tree.leaves(params))),
                   'param_bytes_total': int(total(params)), 'param_bytes_per_device': int(per_device(params)),
                   'opt_bytes_per_device': int(per_device(opt_state))})
      del params, opt_state
  base = {r['model']: r for r in rows if r['preset'] == 'replicate'}
  print(f'{n} simulated CPU devices; bytes held by device 0 (float32 parameters, AdamW mu and nu)')
  print('| model | preset | mesh | params | param MiB/device | vs replicated | opt state MiB/device |')
  print('|---|---|---|---|---|---|---|')
  for r in rows:
    ratio = r['param_bytes_per_device'] / base[r['model']]['param_bytes_per_device']
    mesh_txt = ' x '.join(f'{k} {v}' for k, v in r['mesh'].items())
    print(f'| {r["model"]} | {r["preset"]} | {mesh_txt} | {r["num_params"]:,} | '
          f'{r["param_bytes_per_device"] / 2**20:.2f} | {ratio:.3f} (1/{1 / ratio:.2f}) | '
          f'{r["opt_bytes_per_device"] / 2**20:.2f} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
