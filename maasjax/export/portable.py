"""The version folder's JAX artifact: what `maasjax serve` runs without the training code or workdir.

`jax/<signature>.jaxexport` is a serialized `jax.export` module per signature (StableHLO, the batch and
other variable axes symbolic, lowered for the same platforms as the SavedModel) taking
`(variables, inputs)`; `jax/variables.npz` holds the inference variables, one array per parameter path
('params/Conv_0/kernel'). NumPy's .npz because it is portable (any language with a zip reader and the .npy
header spec), exact for every float dtype used here, and needs nothing beyond numpy to read — unlike pickle
it runs no code on load, and unlike an Orbax checkpoint a server needs no Orbax.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

JAX_DIR = 'jax'
VARIABLES_FILE = 'variables.npz'
SEP = '/'


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{SEP}{key}' if prefix else str(key)
    if isinstance(value, dict) or hasattr(value, 'items'):
      out.update(flatten(dict(value), path))
    else:
      out[path] = np.asarray(value)
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split(SEP)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def module_path(version_dir: str, signature: str) -> str:
  return os.path.join(version_dir, JAX_DIR, f'{signature}.jaxexport')


def has_artifact(version_dir: str) -> bool:
  return os.path.exists(os.path.join(version_dir, JAX_DIR, VARIABLES_FILE))


def write(version_dir: str, sigs, variables, example_inputs: dict[str, dict[str, np.ndarray]],
          platforms: tuple[str, ...]) -> None:
  """Serializes each signature with symbolic variable axes, and the variables as plain arrays."""
  import jax
  from jax import export
  os.makedirs(os.path.join(version_dir, JAX_DIR), exist_ok=True)
  plain = unflatten(flatten(variables))  # plain nested dicts: the structure the loader rebuilds
  np.savez(os.path.join(version_dir, JAX_DIR, VARIABLES_FILE), **flatten(plain))
  var_structs = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), plain)
  for name, sig in sigs.items():
    scope = export.SymbolicScope()
    poly = sig.polymorphic_shapes()
    args = {k: jax.ShapeDtypeStruct(export.symbolic_shape(poly[k], like=v.shape, scope=scope), v.dtype)
            for k, v in example_inputs[name].items()}
    exported = export.export(jax.jit(sig.fn), platforms=tuple(platforms))(var_structs, args)
    with open(module_path(version_dir, name), 'wb') as f:
      f.write(exported.serialize())


def load(version_dir: str, signatures: list[str]):
  """(variables, {signature: jitted callable (variables, inputs) -> outputs}) from the artifact alone."""
  import jax
  from jax import export
  with np.load(os.path.join(version_dir, JAX_DIR, VARIABLES_FILE)) as npz:
    variables = unflatten({k: npz[k] for k in npz.files})
  fns = {}
  for name in signatures:
    with open(module_path(version_dir, name), 'rb') as f:
      fns[name] = jax.jit(export.deserialize(bytearray(f.read())).call)
  return jax.device_put(variables), fns
