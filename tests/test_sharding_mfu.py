"""benchmarks/gpu_check.sh (-> benchmarks/lm_mfu.py) runs end to end on CPU and counts FLOPs right."""
import importlib.util
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
  spec = importlib.util.spec_from_file_location('lm_mfu', os.path.join(ROOT, 'benchmarks', 'lm_mfu.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_model_flops_count_kernels_and_attention():
  import jax
  import jax.numpy as jnp
  bench = load_benchmark()
  cfg = dict(bench.SIZES['cpu'])
  tf = bench.load_transformer()
  model = tf.DecoderLM(vocab_size=cfg['vocab_size'], num_layers=cfg['num_layers'], num_heads=cfg['num_heads'],
                       emb_dim=cfg['emb_dim'], mlp_dim=cfg['mlp_dim'], max_len=cfg['seq_len'])
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))['params']
  flops, matmul = bench.model_flops_per_token(params, cfg)
  d, f, v, n = cfg['emb_dim'], cfg['mlp_dim'], cfg['vocab_size'], cfg['num_layers']
  assert matmul == n * (4 * d * d + 2 * d * f) + d * v  # q, k, v, out; wi, wo; logits
  assert flops == 6 * matmul + 12 * n * cfg['seq_len'] * d


def test_chip_peaks_are_matched_by_device_kind():
  bench = load_benchmark()

  class Dev:
    platform = 'gpu'

    def __init__(self, kind):
      self.device_kind = kind

  assert bench.chip_peak(Dev('NVIDIA H100 80GB HBM3'), 0, 0)[0] == 989e12
  assert bench.chip_peak(Dev('NVIDIA H100 PCIe'), 0, 0)[0] == 756e12
  assert bench.chip_peak(Dev('NVIDIA H200'), 0, 0)[0] == 989e12
  assert bench.chip_peak(Dev('NVIDIA A100-SXM4-40GB'), 0, 0)[0] == 312e12
  assert bench.chip_peak(Dev('TPU v5 lite'), 0, 0)[0] == 197e12
  assert bench.chip_peak(Dev('TPU v4'), 0, 0)[0] == 275e12
  with pytest.raises(SystemExit, match='pass --peak_tflops'):
    bench.chip_peak(Dev('Mystery X1'), 0, 0)


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_reports_mfu(tmp_path):
  env = dict(os.environ, ALLOW_CPU='1', OUT=str(tmp_path), JAX_PLATFORMS='cpu')
  proc = subprocess.run(['bash', os.path.join(ROOT, 'benchmarks', 'gpu_check.sh'), '--steps', '2',
                         '--batch_per_device', '4', '--no_calibrate'],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'tokens/s:' in proc.stdout and 'MFU:' in proc.stdout
  result = json.loads((tmp_path / 'gpu_check.json').read_text())
  assert result['platform'] == 'cpu' and result['dtype'] == 'bfloat16' and result['steps'] == 2
  assert result['tokens_per_s'] > 0 and 0 < result['mfu'] < 1
  assert result['loss_last'] < result['loss_first']  # it trained
  assert (tmp_path / 'gpu_check.log').read_text().count('RESULT ') == 1
