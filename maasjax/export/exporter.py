"""`export_workdir`: checkpoint -> jax2tf SavedModel (orbax-export) -> parity check in plain TF -> `OUT/NAME/VERSION/`.

The version is written into a hidden temporary folder and renamed into place only after the
parity check passes, so a server watching OUT never sees a half-written or failing version.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata as pkg_metadata

import numpy as np

from maasjax.config import ConfigError
from maasjax.export import layout, portable
from maasjax.export.signatures import signatures_for
from maasjax.spec import SERVING_DEFAULT, Signature

DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')


class ParityError(RuntimeError):
  """The reloaded SavedModel's outputs differ from JAX's by more than the tolerance."""


@dataclasses.dataclass
class ExportResult:
  path: str
  version: int
  max_abs_diff: dict[str, float]  # 'SIGNATURE/OUTPUT' -> max |TF - JAX| on held-out inputs
  num_examples: int
  seconds: float


def _versions() -> dict[str, str]:
  out = {}
  for pkg in ('jax', 'jaxlib', 'flax', 'tensorflow-cpu', 'tensorflow', 'orbax-export', 'maasjax'):
    try:
      out[pkg] = pkg_metadata.version(pkg)
    except pkg_metadata.PackageNotFoundError:
      pass
  return out


def heldout_inputs(exp, sig: Signature, num_examples: int) -> tuple[dict[str, np.ndarray], int, str]:
  """The first `num_examples` real (unpadded) test examples, as the signature's inputs, and how many
  examples they hold: (inputs, count, unit)."""
  split = 'test' if 'test' in exp.dataset.splits() else exp.dataset.splits()[-1]
  batch = next(iter(exp.dataset.eval_batches(split, num_examples)))
  inputs = sig.example_inputs(batch)
  if sig.batchable and 'mask' in batch:
    keep = np.asarray(batch['mask']) > 0
    inputs = {k: np.asarray(v)[keep] for k, v in inputs.items()}
  inputs = {k: np.asarray(v) for k, v in inputs.items()}
  return (inputs,) + count_examples(sig, inputs, batch)


def count_examples(sig: Signature, inputs: dict[str, np.ndarray], batch) -> tuple[int, str]:
  """Rows for a batchable signature; for padded graph arrays the real graphs (not the first input's nodes)."""
  if sig.batchable:
    return int(next(iter(inputs.values())).shape[0]), 'rows'
  if 'n_node' in inputs:
    n_node, mask = inputs['n_node'], batch.get('mask')
    if mask is not None and np.shape(mask) == n_node.shape:  # a graph-level mask: 0 marks the padding graph
      return int(np.sum(np.asarray(mask) > 0)), 'graphs'
    return int(n_node.shape[0]), 'graphs'
  return 1, 'requests'


def shape_axes(sig: Signature, variables, inputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
  """(inputs, outputs): each tensor's axes, a symbol ('b', 't', 'n', ...) where the size varies with the
  request, else the fixed size. A server pads the symbols' axes to buckets and cuts the outputs back."""
  import jax
  from jax import export
  scope = export.SymbolicScope()
  poly = sig.polymorphic_shapes()
  args = {k: jax.ShapeDtypeStruct(export.symbolic_shape(poly[k], like=v.shape, scope=scope), v.dtype)
          for k, v in inputs.items()}
  out = jax.eval_shape(sig.fn, variables, args)
  axes = lambda shape: [d if isinstance(d, int) else str(d) for d in shape]
  return ({k: axes(v.shape) for k, v in args.items()}, {k: axes(v.shape) for k, v in out.items()})


def tokenizer_metadata(info) -> dict | None:
  """How a REST client maps text to the token ids a text model takes (None for other data)."""
  from maasjax.tokenizers import tokenizer_from_info
  if 'tokenizer' not in info.extra:
    return None
  tok = tokenizer_from_info(info)
  spec = dict(info.extra['tokenizer'], vocab_size=int(tok.vocab_size), offset=int(tok.offset), pad_id=0,
              bos_id=tok.bos_id, eos_id=tok.eos_id)
  if spec['kind'] == 'char':
    spec['rule'] = (f'id = index of the character in "chars" + {tok.offset}; 0 is padding'
                    + (', 1 BOS, 2 EOS' if tok.bos_id is not None else '') + '; ids below the offset decode to nothing')
  else:
    spec['rule'] = f'id = UTF-8 byte value + {tok.offset}; 0 is padding, 1 BOS, 2 EOS'
  return spec


def run_in_plain_tf(saved_dir: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Reloads the SavedModel in a fresh process that imports TF but not JAX, and runs it."""
  with tempfile.TemporaryDirectory() as tmp:
    in_path, out_path = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
    np.savez(in_path, **inputs)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                                           os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-m', 'maasjax.export.parity', saved_dir, in_path, out_path],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
      raise ParityError(f'the exported SavedModel at {saved_dir} failed to run in TF:\n{proc.stderr[-2000:]}')
    return dict(np.load(out_path))


def compare(jax_out: dict[str, np.ndarray], tf_out: dict[str, np.ndarray], tolerance: dict[str, float]
            ) -> tuple[dict[str, float], list[str]]:
  """Max |TF - JAX| per output, and a description of each output over its bound: `tolerance` times
  max(1, the output's largest |value|). float32 keeps ~7 digits, so logits of 30 summed in another order
  differ by ~1e-5 (an MLP's did, exported to ONNX); an absolute bound would refuse round-off there."""
  diffs, failures = {}, []
  for key, ref in sorted(jax_out.items()):
    if key not in tf_out:
      failures.append(f'{key}: missing from the SavedModel outputs')
      continue
    got = tf_out[key]
    if got.shape != ref.shape:
      failures.append(f'{key}: shape {got.shape} in TF, {ref.shape} in JAX')
      continue
    if np.issubdtype(ref.dtype, np.floating):
      diffs[key] = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
      scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
      bound = tolerance[key.split('/')[0]] * scale
      if not diffs[key] <= bound:
        failures.append(f'{key}: max abs difference {diffs[key]:.3g} > {bound:.3g}'
                        + (f' ({tolerance[key.split("/")[0]]:g} x its largest |value| {scale:.3g})' if scale > 1 else ''))
    else:
      diffs[key] = float(np.sum(got != ref))
      if diffs[key]:
        failures.append(f'{key}: {int(diffs[key])} of {ref.size} values differ')
  return diffs, failures


def export_workdir(config, workdir: str, model_name: str, out: str, version: int | None = None,
                   platforms: tuple[str, ...] = DEFAULT_PLATFORMS, parity_examples: int = 64,
                   step: int | None = None, decode_slots: int = 8, max_length: int | None = None) -> ExportResult:
  """Exports the workdir's latest (or given) checkpoint as `out/model_name/version/`.

  A decoder LM also gets the decode-slot modules a streaming server runs (maasjax.export.lm): `decode_slots`
  slots (0: none) of `max_length` tokens (default: the training context).
  """
  t0 = time.time()
  layout.check_model_name(model_name)
  model_dir = os.path.join(out, model_name)
  if version is None:
    version = layout.next_version(model_dir)
  elif version < 1:
    raise ConfigError(f'--version {version}: expected a positive integer')
  final = os.path.join(model_dir, str(version))
  if os.path.exists(final):
    raise ConfigError(f'{final} already exists; versions are immutable: choose another --version or omit it '
                      f'(next free: {layout.next_version(model_dir)})')

  import jax
  import tensorflow as tf
  from orbax.export import ExportManager, JaxModule, ServingConfig
  from maasjax.train.loop import restore_latest

  exp, state, ckpt_step = restore_latest(config, workdir, step)
  sigs = signatures_for(exp.task, exp.model)
  from maasjax.models.transformer import DecoderLM
  from maasjax.export import lm
  serves_lm = decode_slots > 0 and isinstance(exp.model, DecoderLM) and exp.task.name == 'language_modelling'
  if serves_lm:
    max_length = int(exp.dataset.info.input_shape[0]) if max_length is None else max_length
    lm.check_settings(exp.model, decode_slots, max_length)  # before any slow work
  variables = jax.device_get({'params': state.params, **state.model_state})

  # The JAX reference, computed before any TF tracing, with the same jit path training used.
  inputs, jax_out, examples, out_shapes, axes = {}, {}, {}, {}, {}
  for name, sig in sigs.items():
    x, count, unit = heldout_inputs(exp, sig, parity_examples)
    examples[name] = {'num_examples': count, 'unit': unit}
    inputs.update({f'{name}/{k}': v for k, v in x.items()})
    y = jax.device_get(jax.jit(sig.fn)(variables, x))
    jax_out.update({f'{name}/{k}': np.asarray(v) for k, v in y.items()})
    axes[name] = shape_axes(sig, variables, x)
    out_shapes[name] = {k: [-1 if isinstance(d, str) else d for d in v] for k, v in axes[name][1].items()}

  module = JaxModule(
      variables, {name: sig.fn for name, sig in sigs.items()},
      input_polymorphic_shape={name: sig.polymorphic_shapes() for name, sig in sigs.items()},
      jax2tf_kwargs={name: {'native_serialization_platforms': tuple(platforms)} for name in sigs},
      trainable=False)  # inference only: no gradients in the graph
  serving = [ServingConfig(name, method_key=name, input_signature=[{
      k: tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=k) for k, spec in sig.inputs.items()}])
      for name, sig in sigs.items()]

  os.makedirs(model_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.tmp-{version}-', dir=model_dir)
  try:
    ExportManager(module, serving).save(tmp)
    tf_out = run_in_plain_tf(tmp, inputs)
    diffs, failures = compare(jax_out, tf_out, {n: s.tolerance for n, s in sigs.items()})
    # The JAX artifact beside it (what the default server backend runs), checked the same way.
    x_by_sig = {name: {k.split('/', 1)[1]: v for k, v in inputs.items() if k.startswith(name + '/')} for name in sigs}
    portable.write(tmp, sigs, variables, x_by_sig, tuple(platforms))
    art_vars, art_fns = portable.load(tmp, list(sigs))
    art_out = {f'{name}/{k}': np.asarray(v) for name in sigs
               for k, v in jax.device_get(art_fns[name](art_vars, x_by_sig[name])).items()}
    art_diffs, art_failures = compare(jax_out, art_out, {n: s.tolerance for n, s in sigs.items()})
    failures += [f'jax.export module: {f}' for f in art_failures]
    lm_meta = None
    if serves_lm and not failures:
      from maasjax.tokenizers import tokenizer_from_info
      prompt = inputs[f'{SERVING_DEFAULT}/tokens'][0]
      lm_meta = lm.write(tmp, exp.model, variables, decode_slots, max_length, tuple(platforms),
                         tokenizer_from_info(exp.dataset.info).eos_id, prompt[prompt != 0])
    if failures:
      raise ParityError(f'export of {workdir} refused: the SavedModel reloaded in TF does not reproduce JAX on '
                        f'{examples[SERVING_DEFAULT]["num_examples"]} held-out {examples[SERVING_DEFAULT]["unit"]}:'
                        '\n  ' + '\n  '.join(failures))
    summary = {}
    if os.path.exists(os.path.join(workdir, 'summary.json')):
      with open(os.path.join(workdir, 'summary.json')) as f:
        summary = json.load(f)
    meta = {
        'format': 1, 'model_name': model_name, 'version': version, 'task': exp.task.name,
        'created_unix': time.time(), 'platforms': list(platforms), 'library_versions': _versions(),
        'checkpoint': {'workdir': os.path.abspath(workdir), 'step': ckpt_step},
        'config': json.loads(exp.config.to_json_best_effort()),
        'dataset_info': exp.dataset.info.to_dict(),
        'label_names': list(exp.dataset.info.label_names),
        'signatures': {name: {'inputs': {k: s.to_dict() for k, s in sig.inputs.items()},
                              'outputs': {k.split('/', 1)[1]: {'shape': out_shapes[name][k.split('/', 1)[1]],
                                                               'dtype': str(v.dtype)}
                                          for k, v in jax_out.items() if k.startswith(name + '/')},
                              'batchable': sig.batchable,
                              # symbol per variable axis ('b' batch, 't' length, 'n'/'e'/'g' graph sizes)
                              'input_axes': axes[name][0], 'output_axes': axes[name][1]}
                       for name, sig in sigs.items()},
        'metrics': {k: v for k, v in summary.items() if k.startswith(('test/', 'eval/'))},
        # The DP guarantee the weights were trained under (epsilon, delta, ...), or None: it travels with them.
        'privacy': {k: v for k, v in summary.items() if k.startswith('privacy/')} or None,
        'jax_artifact': {'modules': {name: os.path.relpath(portable.module_path('.', name)) for name in sigs},
                         'variables': os.path.join(portable.JAX_DIR, portable.VARIABLES_FILE),
                         'max_abs_diff': art_diffs},
        'parity': {'max_abs_diff': diffs, 'num_examples': examples[SERVING_DEFAULT]['num_examples'],
                   'examples': examples, 'tolerance': {n: s.tolerance for n, s in sigs.items()},
                   'checked_in': 'SavedModel: a separate TF process; jax.export module: the exporting process'},
    }
    tokenizer = tokenizer_metadata(exp.dataset.info)
    if tokenizer:
      meta['tokenizer'] = tokenizer
    if lm_meta:
      meta['lm'] = lm_meta  # what `maasjax serve` offers on /v1/completions
    os.makedirs(os.path.join(tmp, os.path.dirname(layout.METADATA_PATH)), exist_ok=True)
    with open(os.path.join(tmp, layout.METADATA_PATH), 'w') as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; servers may run as another user
    os.rename(tmp, final)  # atomic: watchers see the whole version or none of it
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return ExportResult(final, version, diffs, meta['parity']['num_examples'], time.time() - t0)
