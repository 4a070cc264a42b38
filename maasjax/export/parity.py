"""Runs an exported SavedModel in a plain TF process (no flax or maasjax model code): `python -m maasjax.export.parity`.

Usage: parity SAVED_MODEL_DIR INPUTS.npz OUTPUTS.npz, with arrays keyed 'SIGNATURE/TENSOR'.
"""
import sys


def main(argv) -> int:
  saved_dir, inputs_path, outputs_path = argv
  import numpy as np
  import tensorflow as tf
  loaded = tf.saved_model.load(saved_dir)
  arrays = dict(np.load(inputs_path))
  results = {}
  for sig_name in sorted({k.split('/', 1)[0] for k in arrays}):
    fn = loaded.signatures[sig_name]
    feed = {k.split('/', 1)[1]: tf.constant(v) for k, v in arrays.items() if k.startswith(sig_name + '/')}
    for name, value in fn(**feed).items():
      results[f'{sig_name}/{name}'] = value.numpy()
  np.savez(outputs_path, **results)
  # TF itself imports parts of jax; the point is that no model code (flax, maasjax.train) is here.
  leaked = [m for m in ('flax', 'orbax.export', 'maasjax.train', 'maasjax.models') if m in sys.modules]
  if leaked:
    print(f'parity: the TF process imported {leaked}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
