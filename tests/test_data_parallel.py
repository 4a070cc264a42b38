"""Data parallel on 8 simulated CPU devices matches 1 device (same code, only the mesh differs)."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT

SCRIPT = r'''
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from conftest import experiment_config
from maasjax import parallel
from maasjax.train.loop import restore_latest, train_and_evaluate
cfg = lambda: experiment_config("digits_cnn", num_train_steps=12, batch_size=64, eval_batch_size=64,
                                log_every_steps=1, eval_every_steps=12, **{"checkpoint.every_steps": 12})
workdir = sys.argv[1]
summary = train_and_evaluate(cfg(), workdir)
exp, state, _ = restore_latest(cfg(), workdir)
batch = parallel.global_batch(exp.mesh, exp.dataset.train_batch(0, 64))
losses = [json.loads(l)["train/loss"] for l in open(workdir + "/metrics.jsonl")]
print(json.dumps({
    "devices": jax.device_count(),
    "batch_shards": len(batch["inputs"].addressable_shards),
    "shard_rows": batch["inputs"].addressable_shards[0].data.shape[0],
    "losses": losses,
    "test_loss": summary["test/loss"],
    "kernel": np.asarray(state.params["Dense_1"]["kernel"]).tolist(),
}))
'''


def _run(n_devices, workdir):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n_devices}', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', SCRIPT, workdir], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one(tmp_path):
  one = _run(1, str(tmp_path / 'one'))
  eight = _run(8, str(tmp_path / 'eight'))
  assert one['devices'] == 1 and eight['devices'] == 8
  assert eight['batch_shards'] == 8 and eight['shard_rows'] == 8  # the batch really is split 8 ways
  assert len(one['losses']) == len(eight['losses']) == 12
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=2e-4, atol=1e-5)
  assert abs(eight['test_loss'] - one['test_loss']) < 1e-3
  np.testing.assert_allclose(eight['kernel'], one['kernel'], atol=2e-4)
  assert one['losses'][-1] < one['losses'][0]  # and it is training, not standing still
