"""The streaming-server part of a decoder LM's export: `jax/lm_prefill`, `lm_insert` and `lm_decode` modules
(jax.export, variables as arguments, the same variables.npz) for S decode slots of `max_length` tokens each,
checked against the KV-cached `generate` path before the version is published. See
`maasjax.models.decoding.slot_functions` for what each function takes and returns."""
from __future__ import annotations

import os

import numpy as np

from maasjax.config import ConfigError
from maasjax.export import portable

MODULES = ('lm_prefill', 'lm_insert', 'lm_decode')
MIN_BUCKET = 16


def prefill_buckets(max_length: int) -> list[int]:
  """Prompt lengths prefill is compiled for: powers of two from 16, and `max_length` itself."""
  out, b = [], MIN_BUCKET
  while b < max_length:
    out.append(b)
    b *= 2
  return out + [max_length]


def check_settings(model, decode_slots: int, max_length: int) -> None:
  if decode_slots < 1:
    raise ConfigError(f'--decode-slots {decode_slots}: expected a positive number of slots (or 0 for no LM serving)')
  if max_length < 2:
    raise ConfigError(f'--max-length {max_length}: expected at least 2 tokens (a prompt token and one generated)')
  if model.positions == 'learned' and max_length > model.max_len:
    raise ConfigError(f'--max-length {max_length} exceeds the model\'s learned position table '
                      f'(model.max_len={model.max_len})')


def write(version_dir: str, model, variables, decode_slots: int, max_length: int, platforms: tuple[str, ...],
          eos_id: int | None, prompt: np.ndarray) -> dict:
  """Serializes the three modules; returns the metadata entry ('lm'). `prompt` (1-D tokens) is decoded
  greedily through the written modules and through `lm_generate`; a difference refuses the export."""
  import jax
  import jax.numpy as jnp
  from jax import export
  from maasjax.models import decoding
  check_settings(model, decode_slots, max_length)
  plain = portable.unflatten(portable.flatten(variables))
  prefill, insert, decode, empty_cache = decoding.slot_functions(model, max_length)
  struct = lambda x: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), x)
  var_s = struct(plain)
  one = struct(jax.eval_shape(lambda: empty_cache(1)))
  cache_1 = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype), one)
  cache_s = struct(jax.eval_shape(lambda: empty_cache(decode_slots)))
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  row = lambda dtype: jax.ShapeDtypeStruct((decode_slots,), dtype)
  (p,) = export.symbolic_shape('p', constraints=(f'p <= {max_length}',))  # a prompt fits the cache
  args = {
      'lm_prefill': (prefill, (var_s, jax.ShapeDtypeStruct((1, p), jnp.int32), scalar(jnp.int32),
                               scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.int32))),
      'lm_insert': (insert, (cache_s, cache_1, scalar(jnp.int32))),
      'lm_decode': (decode, (var_s, cache_s) + tuple(row(d) for d in (jnp.int32, jnp.int32, jnp.int32, jnp.float32,
                                                                       jnp.int32, jnp.int32))),
  }
  os.makedirs(os.path.join(version_dir, portable.JAX_DIR), exist_ok=True)
  for name, (fn, shapes) in args.items():
    exported = export.export(jax.jit(fn), platforms=tuple(platforms))(*shapes)
    with open(portable.module_path(version_dir, name), 'wb') as f:
      f.write(exported.serialize())
  meta = {'decode_slots': decode_slots, 'max_length': max_length, 'prefill_buckets': prefill_buckets(max_length),
          'eos_id': eos_id, 'modules': {name: os.path.relpath(portable.module_path('.', name)) for name in MODULES}}
  _check(version_dir, meta, model, plain, prompt, eos_id)
  return meta


def _check(version_dir, meta, model, variables, prompt, eos_id) -> None:
  """Greedy tokens through the written modules == `lm_generate` (KV cache, left-padded prompt)."""
  import jax
  from maasjax.models import decoding
  from maasjax.export.exporter import ParityError
  n = min(len(prompt), meta['max_length'] - 1)
  new = min(8, meta['max_length'] - n)
  prompt = np.asarray(prompt[:n], np.int32)
  fns = load(version_dir, meta)
  ref = np.asarray(jax.jit(lambda v, x: decoding.lm_generate(model, v['params'], x, new, jax.random.key(0),
                                                             eos_id=eos_id))(variables, prompt[None]))[0]
  got = greedy(fns, jax.device_put(variables), prompt, new)
  if eos_id is not None and eos_id in ref.tolist():  # lm_generate pads after EOS; compare up to it
    stop = ref.tolist().index(eos_id) + 1
    ref, got = ref[:stop], got[:stop]
  if got.tolist() != ref.tolist():
    raise ParityError(f'export refused: greedy tokens through the decode slots {got.tolist()} differ from the KV-cached '
                      f'reference {ref.tolist()}')


def greedy(fns: dict, variables, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
  """Greedy decoding of one prompt in slot 0 through the loaded modules (the export check)."""
  meta = fns['meta']
  bucket = next(b for b in meta['prefill_buckets'] if b >= len(prompt))
  tokens = np.zeros((1, bucket), np.int32)
  tokens[0, :len(prompt)] = prompt
  first, one = fns['lm_prefill'](variables, tokens, np.int32(len(prompt)), np.float32(0), np.int32(0), np.int32(0))
  cache = fns['lm_insert'](fns['empty_cache'](), one, np.int32(0))
  s = meta['decode_slots']
  out = [int(np.asarray(first)[0])]
  zeros = np.zeros(s, np.int32)
  for i in range(1, new_tokens):
    tok = zeros.copy()
    tok[0] = out[-1]
    pos, step = zeros.copy(), zeros.copy()
    pos[0], step[0] = len(prompt) + i - 1, i
    next_s, cache = fns['lm_decode'](variables, cache, tok, pos, step, np.zeros(s, np.float32), zeros, zeros)
    out.append(int(np.asarray(next_s)[0]))
  return np.asarray(out, np.int32)


def load(version_dir: str, meta: dict) -> dict:
  """{module name: jitted callable, 'empty_cache': () -> a zero slot cache, 'meta': meta} from the version folder."""
  import jax
  import jax.numpy as jnp
  from jax import export
  fns = {'meta': meta}
  for name in MODULES:
    with open(portable.module_path(version_dir, name), 'rb') as f:
      exported = export.deserialize(bytearray(f.read()))
    # The slot cache is updated in place: its old buffers are donated to the new one.
    donate = {'lm_insert': (0,), 'lm_decode': (1,)}.get(name, ())
    fns[name] = jax.jit(exported.call, donate_argnums=donate)
    if name == 'lm_insert':
      cache_avals = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0][0]
      fns['empty_cache'] = lambda avals=cache_avals: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), avals)
  return fns
