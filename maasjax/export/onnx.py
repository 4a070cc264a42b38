"""ONNX export for Triton's onnxruntime backend and ONNX Runtime users: `DIR/NAME/VERSION/model.onnx` and
`DIR/NAME/config.pbtxt` (Triton's model repository), from the same JAX function and weights as the
SavedModel, through jax2onnx (the `[onnx]` extra). tf2onnx cannot read our SavedModels: jax2tf writes one
XlaCallModule op, which it has no handler for.

Refused unless ONNX Runtime, in a separate process that does not import JAX, reproduces the JAX function on
held-out inputs (float outputs within the signature's tolerance, integer outputs exactly). Families: the
batchable image and feature classifiers (MLP, CNN, ResNet); graph, sequence and generate signatures are
not converted (their gathers, scans and KV-cache updates have no jax2onnx lowering we have checked).

`int8=True` then quantizes the checked float ONNX with onnxruntime.quantization (static, QDQ format:
per-channel int8 weights, uint8 activations calibrated on training batches). int8 cannot reproduce float
within 1e-5, so it is refused unless its classes equal JAX's on at least INT8_MIN_AGREEMENT of the held-out
inputs; the figures (agreement, the largest probability difference) are reported. QOperator format
(QLinearConv) was measured too: faster, but its classes agreed with float on only 85% of the digits.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from maasjax.config import ConfigError
from maasjax.export import layout
from maasjax.spec import SERVING_DEFAULT

ONNX_TASKS = ('classification',)  # what converts and passes parity today
INT8_MIN_AGREEMENT = 0.99  # share of held-out inputs whose int8 classes must equal JAX's
INT8_CALIBRATION_BATCHES = 8
TRITON_TYPES = {'float32': 'TYPE_FP32', 'float64': 'TYPE_FP64', 'int32': 'TYPE_INT32', 'int64': 'TYPE_INT64',
                'uint8': 'TYPE_UINT8', 'bool': 'TYPE_BOOL', 'float16': 'TYPE_FP16'}


@dataclasses.dataclass
class OnnxExportResult:
  path: str
  version: int
  max_abs_diff: dict[str, float]
  num_examples: int
  seconds: float
  int8: dict | None = None  # {'class_agreement', 'float_bytes', 'int8_bytes'} when quantized


@contextlib.contextmanager
def _quiet(*loggers: str):
  levels = {name: logging.getLogger(name).level for name in loggers}
  for name in loggers:
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    yield
  finally:
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)


def triton_config(name: str, inputs: dict, outputs: dict[str, tuple], max_batch_size: int) -> str:
  """config.pbtxt for Triton's onnxruntime backend: the batch axis is Triton's (dims leave it out)."""
  def tensor(n, dtype, shape):
    dims = ', '.join(str(d) for d in shape[1:])
    # One value per example (e.g. a class): Triton wants a dimension, reshaped away for the model.
    reshape = '' if dims else '\n    reshape: { shape: [ ] }'
    return (f'  {{\n    name: "{n}"\n    data_type: {TRITON_TYPES[str(np.dtype(dtype))]}\n    dims: [ {dims or 1} ]'
            f'{reshape}\n  }}')
  ins = ',\n'.join(tensor(k, spec.dtype, spec.shape) for k, spec in inputs.items())
  outs = ',\n'.join(tensor(k, dtype, shape) for k, (dtype, shape) in outputs.items())
  return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
          f'input [\n{ins}\n]\noutput [\n{outs}\n]\ndynamic_batching {{\n  max_queue_delay_microseconds: 1000\n}}\n')


def run_in_onnxruntime(model_path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Runs the ONNX file in a fresh process that imports onnxruntime and numpy, not JAX."""
  with tempfile.TemporaryDirectory() as tmp:
    in_path, out_path = os.path.join(tmp, 'in.npz'), os.path.join(tmp, 'out.npz')
    np.savez(in_path, **inputs)
    code = ('import sys, numpy as np, onnxruntime as ort\n'
            'ort.set_default_logger_severity(3)\n'
            's = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])\n'
            'x = dict(np.load(sys.argv[2]))\n'
            'names = [o.name for o in s.get_outputs()]\n'
            'np.savez(sys.argv[3], **dict(zip(names, s.run(names, x))))\n'
            'assert "jax" not in sys.modules, "onnxruntime parity process imported jax"\n')
    proc = subprocess.run([sys.executable, '-c', code, model_path, in_path, out_path], capture_output=True, text=True)
    if proc.returncode:
      raise ConfigError(f'the ONNX model at {model_path} failed to run in onnxruntime:\n{proc.stderr[-2000:]}')
    return dict(np.load(out_path))


def export_onnx(config, workdir: str, model_name: str, out: str, version: int | None = None,
                parity_examples: int = 64, step: int | None = None, max_batch_size: int = 32,
                int8: bool = False) -> OnnxExportResult:
  """Writes `out/model_name/version/model.onnx` and `out/model_name/config.pbtxt` after the parity check
  (with `int8`, the quantized model after its class-agreement check)."""
  t0 = time.time()
  layout.check_model_name(model_name)
  try:
    from jax2onnx import to_onnx
  except ImportError:
    raise ConfigError("--format onnx needs the [onnx] extra: pip install -e '.[onnx]'") from None
  import jax
  from maasjax.export.exporter import compare, heldout_inputs
  from maasjax.export.signatures import signatures_for
  from maasjax.train.loop import restore_latest
  exp, state, _ = restore_latest(config, workdir, step)
  if exp.task.name not in ONNX_TASKS:
    raise ConfigError(f'--format onnx: the {exp.task.name!r} task of {workdir!r} does not convert to ONNX; '
                      f'supported: {", ".join(ONNX_TASKS)} (MLP, CNN, ResNet). Serve it from the SavedModel.')
  sig = signatures_for(exp.task, exp.model)[SERVING_DEFAULT]
  variables = jax.device_get({'params': state.params, **state.model_state})
  x, count, _ = heldout_inputs(exp, sig, parity_examples)
  reference = {k: np.asarray(v) for k, v in jax.device_get(jax.jit(sig.fn)(variables, x)).items()}
  names = list(reference)
  spec = sig.inputs['inputs']

  def serve(inputs_BxS):
    outputs = sig.fn(variables, {'inputs': inputs_BxS})
    return tuple(outputs[k] for k in names)

  model_dir = os.path.join(out, model_name)
  version = layout.next_version(model_dir) if version is None else version
  final = os.path.join(model_dir, str(version))
  if os.path.exists(final):
    raise ConfigError(f'{final} already exists; versions are immutable: choose another --version or omit it')
  os.makedirs(model_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.tmp-{version}-', dir=model_dir)
  try:
    path = os.path.join(tmp, 'model.onnx')
    abstract = jax.ShapeDtypeStruct(('B',) + tuple(spec.shape[1:]), spec.np_dtype)
    # jax2onnx prints its tracing to stdout and logs at DEBUG: not for users.
    with contextlib.redirect_stdout(io.StringIO()), _quiet('jax2onnx', 'onnx_ir', 'onnx_ir.serde'):
      to_onnx(serve, [abstract], model_name=model_name, return_mode='file', output_path=path,
              input_names=['inputs'], output_names=names)
    got = run_in_onnxruntime(path, {'inputs': x['inputs']})
    diffs, failures = compare(reference, got, {k: sig.tolerance for k in names})
    if failures:
      raise ConfigError(f'ONNX export of {workdir} refused: onnxruntime does not reproduce JAX on {count} held-out '
                        'inputs:\n  ' + '\n  '.join(failures))
    int8_facts = None
    if int8:
      if 'classes' not in names:
        raise ConfigError(f'--int8: the signature of {workdir!r} has no classes output to check int8 against')
      int8_facts = _quantize(path, exp, spec, config)
      got = run_in_onnxruntime(path, {'inputs': x['inputs']})
      agreement = float(np.mean(got['classes'] == reference['classes']))
      diffs = {k: float(np.max(np.abs(got[k].astype(np.float64) - reference[k]))) for k in names
               if reference[k].dtype.kind == 'f'}  # int8 moves near-tied top-k ranks: classes are checked above
      if agreement < INT8_MIN_AGREEMENT:
        raise ConfigError(f'--int8 export of {workdir} refused: the int8 model\'s classes equal JAX\'s on '
                          f'{agreement:.1%} of {count} held-out inputs (at least {INT8_MIN_AGREEMENT:.0%} needed)')
      int8_facts['class_agreement'] = agreement
    outputs = {k: (v.dtype, v.shape) for k, v in reference.items()}
    with open(os.path.join(model_dir, 'config.pbtxt'), 'w') as f:
      f.write(triton_config(model_name, sig.inputs, outputs, max_batch_size))
    os.chmod(tmp, 0o755)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return OnnxExportResult(final, version, diffs, count, time.time() - t0, int8_facts)


def _quantize(path: str, exp, spec, config) -> dict:
  """Replaces the float ONNX file at `path` by its static int8 (QDQ) quantization, calibrated on the first
  training batches; returns the file sizes."""
  from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
  from onnxruntime.quantization.shape_inference import quant_pre_process
  batches = [{'inputs': np.asarray(exp.dataset.train_batch(step, int(config.batch_size))['inputs'],
                                   dtype=spec.np_dtype)} for step in range(INT8_CALIBRATION_BATCHES)]

  class Batches(CalibrationDataReader):
    def __init__(self):
      self.rest = iter(batches)

    def get_next(self):
      return next(self.rest, None)

  float_bytes = os.path.getsize(path)
  prepared, quantized = path + '.pre.onnx', path + '.int8.onnx'
  import onnxruntime
  onnxruntime.set_default_logger_severity(3)  # its shape-merge warnings on our top-k outputs are not for users
  with contextlib.redirect_stdout(io.StringIO()), _quiet('root', 'onnxruntime'):
    quant_pre_process(path, prepared)
    quantize_static(prepared, quantized, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
  os.replace(quantized, path)
  os.remove(prepared)
  return {'float_bytes': float_bytes, 'int8_bytes': os.path.getsize(path)}
