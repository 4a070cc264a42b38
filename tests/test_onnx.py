"""ONNX export for Triton and ONNX Runtime: the layout Triton reads, and ONNX Runtime alone (no JAX in the
process) giving the SavedModel's classes on 256 held-out digits."""
import os
import subprocess
import sys

import numpy as np

from conftest import run_cli
from serve_fixtures import heldout_digits


def test_onnx_export_runs_in_onnxruntime_without_jax(exported, tmp_path):
  from maasjax.serve.backends import load_savedmodel
  out = str(tmp_path / 'triton')
  result = run_cli('export', '--format', 'onnx', '--workdir', exported['workdirs']['digits'], '--model-name',
                   'digits', '--out', out, '--max-batch-size', '16')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'onnxruntime parity on 64 held-out inputs' in result.stdout and 'DEBUG' not in result.stdout
  config = open(os.path.join(out, 'digits', 'config.pbtxt')).read()
  assert 'platform: "onnxruntime_onnx"' in config and 'max_batch_size: 16' in config
  assert 'name: "inputs"' in config and 'dims: [ 8, 8, 1 ]' in config
  model = os.path.join(out, 'digits', '1', 'model.onnx')
  x = heldout_digits(256)
  np.save(tmp_path / 'x.npy', x)
  code = ('import sys, numpy as np, onnxruntime as ort\n'
          's = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])\n'
          'classes = s.run(["classes"], {"inputs": np.load(sys.argv[2])})[0]\n'
          'np.save(sys.argv[3], classes)\n'
          'print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow")))\n')
  proc = subprocess.run([sys.executable, '-c', code, model, str(tmp_path / 'x.npy'), str(tmp_path / 'c.npy')],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == '[]'  # onnxruntime and numpy alone
  saved = load_savedmodel(os.path.join(exported['base'], 'digits', '1'), 'digits', 1)
  want = np.concatenate([saved.run('serving_default', {'inputs': x[i:i + 64]})['classes'] for i in range(0, 256, 64)])
  np.testing.assert_array_equal(np.load(tmp_path / 'c.npy'), want)


def test_int8_onnx_is_quantized_smaller_and_agrees_on_classes(exported, tmp_path):
  import onnx
  out = str(tmp_path / 'triton8')
  result = run_cli('export', '--format', 'onnx', '--int8', '--workdir', exported['workdirs']['digits'],
                   '--model-name', 'digits', '--out', out)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'int8: classes equal to JAX on ' in result.stdout and result.stderr.strip() == '', result.stderr
  agreement = float(result.stdout.split('classes equal to JAX on ')[1].split('%')[0])
  assert agreement >= 99.0
  model = onnx.load(os.path.join(out, 'digits', '1', 'model.onnx'))
  int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
  assert len(int8_weights) == 4 and any(n.op_type == 'QuantizeLinear' for n in model.graph.node)  # 2 convs, 2 dense
  float_weights = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
                   and np.prod(t.dims) > 16 and not t.name.endswith('_scale')]  # per-channel scales stay float
  assert not float_weights, float_weights
  assert run_cli('export', '--int8', '--workdir', exported['workdirs']['digits'], '--model-name', 'x',
                 '--out', out).returncode == 2
