"""Every exported version serves by itself: the JAX artifact (jax.export modules + variables.npz) beside the
SavedModel, copied to another place with the training workdir gone, from both backends."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import tritonclient.http as tritonclient_http

from conftest import ROOT, run_cli
from maasjax.client import Client
from serve_fixtures import ServerProcess, heldout_digits, jax_reference


def test_copied_export_serves_without_its_workdir_from_both_backends(exported, tmp_path):
  workdir = str(tmp_path / 'workdir')
  shutil.copytree(exported['workdirs']['digits'], workdir)
  x = heldout_digits(16)
  ref = jax_reference(workdir, x)
  out = run_cli('export', '--workdir', workdir, '--model-name', 'digits', '--out', str(tmp_path / 'exports'),
                '--platforms', 'cpu')
  assert out.returncode == 0, out.stderr[-2000:]
  meta = json.load(open(tmp_path / 'exports' / 'digits' / '1' / 'assets.extra' / 'maasjax.json'))
  assert max(meta['jax_artifact']['max_abs_diff'].values()) <= 1e-5  # checked at export, as the SavedModel is
  moved = str(tmp_path / 'elsewhere')
  shutil.move(str(tmp_path / 'exports'), moved)
  shutil.rmtree(workdir)
  listing = run_cli('models', '--model-base-path', moved)
  assert listing.returncode == 0 and 'digits' in listing.stdout
  answers = {}
  for backend in ('jax', 'savedmodel'):
    srv = ServerProcess(moved, '--backend', backend, '--buckets', '1,16', '--max-batch-size', '16')
    try:
      client = tritonclient_http.InferenceServerClient(srv.url[len('http://'):])
      inp = tritonclient_http.InferInput('inputs', list(x.shape), 'FP32')
      inp.set_data_from_numpy(x, binary_data=True)
      result = client.infer('digits', [inp])
      with Client(srv.url) as c:
        assert c.metadata('digits')['platform'] == ('jax' if backend == 'jax' else 'tensorflow_savedmodel')
        rows = c.predict('digits', x)
      answers[backend] = {'logits': result.as_numpy('logits'), 'classes': result.as_numpy('classes'),
                          'v1_logits': np.array([r['logits'] for r in rows]),
                          'v1_classes': np.array([r['classes'] for r in rows])}
    finally:
      srv.stop()
  for backend, got in answers.items():
    np.testing.assert_allclose(got['logits'], ref['logits'], atol=1e-5)
    np.testing.assert_allclose(got['v1_logits'], ref['logits'], atol=1e-5)
    np.testing.assert_array_equal(got['classes'], ref['classes'])
    np.testing.assert_array_equal(got['v1_classes'], ref['classes'])
  np.testing.assert_allclose(answers['jax']['logits'], answers['savedmodel']['logits'], atol=1e-5)


def test_serving_a_jax_artifact_loads_no_training_code(exported):
  """In a process that builds the server and loads every version with the default backend."""
  code = f"""
import json, sys
import jax
from maasjax.serve.app import ServeSettings
from maasjax.serve.server import build
app, repo = build({exported['base']!r}, ServeSettings(buckets=(1,), max_batch_size=1))
repo.poll()
platforms = sorted({{m.platform for versions in repo.served.values() for m in versions.values()}})
loaded = [m for m in sys.modules if m.startswith(('maasjax.train', 'maasjax.data', 'maasjax.models', 'flax'))]
print(json.dumps({{'platforms': platforms, 'loaded': loaded, 'distributed': jax.distributed.is_initialized()}}))
"""
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {'platforms': ['jax'], 'loaded': [], 'distributed': False}


def test_a_version_without_the_artifact_falls_back_to_its_savedmodel(exported, tmp_path, caplog):
  from maasjax.serve.backends import load_jax
  src = os.path.join(exported['base'], 'digits', '1')
  old = str(tmp_path / 'digits' / '1')
  shutil.copytree(src, old)
  shutil.rmtree(os.path.join(old, 'jax'))  # what an export from before the artifact existed holds
  with caplog.at_level('WARNING', logger='maasjax.serve'):
    model = load_jax(old, 'digits', 1)
  assert model.platform == 'tensorflow_savedmodel' and 'has no JAX artifact' in caplog.text
