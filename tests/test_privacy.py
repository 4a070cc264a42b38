"""DP-SGD: the step's math, the sampler, the accounting, refusals, resume and the guarantee in the export."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, experiment_config, run_cli, saved_steps, sigkill_after_checkpoint
from maasjax.privacy import accounting, dpsgd, sampling


def _dp(steps=20, **overrides):
  settings = {'log_every_steps': 10, 'eval_every_steps': steps, 'checkpoint.every_steps': 10, **overrides}
  return experiment_config('digits_mlp_dp', num_train_steps=steps, **settings)


def test_reported_epsilon_is_dp_accountings_own():
  import dp_accounting
  from maasjax.privacy.plan import plan
  config = _dp(300, **{'privacy.noise_multiplier': 1.3})
  p = plan(config, 1258)
  for steps, kind in ((300, 'rdp'), (120, 'pld')):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(64 / 1258, dp_accounting.GaussianDpEvent(1.3)), steps)
    acc = dp_accounting.pld.PLDAccountant() if kind == 'pld' else dp_accounting.rdp.RdpAccountant()
    acc.compose(event)
    assert accounting.epsilon(p.sampling_rate, 1.3, steps, 1e-5, kind) == acc.get_epsilon(1e-5)
  assert p.metrics(300)['privacy/epsilon'] == accounting.epsilon(64 / 1258, 1.3, 300, 1e-5)
  # Calibration meets the target from above: the noise it picks gives at most the target epsilon.
  sigma = accounting.calibrate_noise(2.0, 64 / 1258, 300, 1e-5)
  assert 1.9 < accounting.epsilon(64 / 1258, sigma, 300, 1e-5) <= 2.0


def test_clipping_bounds_every_example_and_keeps_small_ones():
  grads_B = {'w': jax.random.normal(jax.random.key(0), (8, 5, 3)) * jnp.arange(1, 9.0)[:, None, None] * 0.5,
             'b': jax.random.normal(jax.random.key(1), (8, 3))}
  clipped, norms_B = dpsgd.clip_per_example(grads_B, 8.0)
  after_B = dpsgd.per_example_norms(clipped)
  assert np.all(np.asarray(after_B) <= 8.0 + 1e-5)
  small = np.asarray(norms_B) <= 8.0
  assert small.any() and (~small).any()
  np.testing.assert_allclose(np.asarray(after_B)[small], np.asarray(norms_B)[small], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(after_B)[~small], 8.0, rtol=1e-5)


def test_noise_free_unclipped_private_step_equals_the_ordinary_step():
  from maasjax.train.loop import private_batch, setup
  private = setup(_dp(1, **{'privacy.noise_multiplier': 0.0, 'privacy.l2_norm_clip': 1e6,
                            'privacy.sampling': 'fixed'}))
  plain = setup(_dp(1, **{'privacy.enabled': False}))
  batch = private_batch(private, 0)
  assert batch['mask'].sum() == 64
  a, _ = private.steps.train_step(private.steps.init(), batch)
  b, _ = plain.steps.train_step(plain.steps.init(), {k: v for k, v in batch.items() if k != 'mask'})
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-7)


def test_poisson_samples_are_pure_and_sized_by_q():
  n, q = 1258, 64 / 1258
  size = sampling.max_batch_size(n, q, 8)
  assert size % 8 == 0 and sampling.overflow_probability(n, q, size) < 1e-9
  a = sampling.poisson_indices(3, 17, n, q, size)
  b = sampling.poisson_indices(3, 17, n, q, size)
  np.testing.assert_array_equal(a[0], b[0])
  counts = [sampling.poisson_indices(0, s, n, q, size)[1].sum() for s in range(200)]
  assert abs(np.mean(counts) - 64) < 3 and np.std(counts) > 3  # variable batch sizes around q N


@pytest.mark.parametrize('override,message', [
    ('--config.privacy.l2_norm_clip=-1', 'config.privacy.l2_norm_clip=-1: expected a positive'),
    ('--config.privacy.noise_multiplier=-0.5', 'config.privacy.noise_multiplier=-0.5: expected a number >= 0'),
    ('--config.privacy.delta=1.5', 'config.privacy.delta=1.5: expected 0 <= delta < 1'),
    ('--config.privacy.target_epsilon=1e-9', 'config.privacy.target_epsilon=1e-09 is unreachable'),
    ('--config.privacy.sampling=shuffle', "config.privacy.sampling='shuffle': expected one of poisson, fixed"),
])
def test_bad_privacy_settings_exit_2(override, message, tmp_path, capsys):
  from maasjax import cli
  cfg = os.path.join(ROOT, 'experiments', 'digits_mlp_dp.py')
  assert cli.main(['train', '--config', cfg, '--workdir', str(tmp_path / 'w'), override]) == 2
  err = capsys.readouterr().err
  assert message in err and 'Traceback' not in err
  assert not (tmp_path / 'w').exists()


def test_batchnorm_model_is_refused(tmp_path, capsys):
  from maasjax import cli
  cfg = os.path.join(ROOT, 'experiments', 'digits_resnet.py')
  assert cli.main(['train', '--config', cfg, '--workdir', str(tmp_path / 'w'), '--config.privacy.enabled=true']) == 2
  assert 'BatchNorm statistics mix the examples' in capsys.readouterr().err


def test_private_run_killed_and_resumed_is_bit_identical_then_exports_its_guarantee(tmp_path):
  from maasjax.train.loop import restore_latest, train_and_evaluate
  steps = 60
  args = ['--config', 'experiments/digits_mlp_dp.py', f'--config.num_train_steps={steps}',
          '--config.checkpoint.every_steps=10', '--config.log_every_steps=10', '--config.eval_every_steps=30',
          '--config.progress_bar=false']
  reference = str(tmp_path / 'reference')
  train_and_evaluate(_dp(steps, eval_every_steps=30), reference)
  killed = str(tmp_path / 'killed')
  cmd = [sys.executable, '-m', 'maasjax.cli', 'train', '--workdir', killed, *args]
  sigkill_after_checkpoint(cmd, killed, 20)
  assert saved_steps(killed) and max(saved_steps(killed)) < steps
  resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  leaves = lambda w: jax.tree.leaves(restore_latest(_dp(steps, eval_every_steps=30), w)[1])
  for x, y in zip(leaves(reference), leaves(killed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  summary = json.load(open(os.path.join(killed, 'summary.json')))
  assert summary['privacy/steps'] == steps and 0 < summary['privacy/epsilon'] < 10
  report = json.load(open(os.path.join(killed, 'privacy_report.json')))
  assert 0.0 <= report['auc'] <= 1.0 and report['members'] == report['nonmembers'] > 100
  # The guarantee travels with the model: the export's metadata and `maasjax models`.
  base = str(tmp_path / 'exports')
  out = run_cli('export', '--workdir', killed, '--model-name', 'dp', '--out', base, '--platforms', 'cpu')
  assert out.returncode == 0, out.stderr[-2000:]
  meta = json.load(open(os.path.join(base, 'dp', '1', 'assets.extra', 'maasjax.json')))
  assert meta['privacy']['privacy/epsilon'] == pytest.approx(summary['privacy/epsilon'])
  listing = run_cli('models', '--model-base-path', base)
  assert f'eps={summary["privacy/epsilon"]:.3g}' in listing.stdout


def test_accuracy_rises_with_epsilon_across_seeds(tmp_path):
  """Short runs (300 steps), two seeds each: no noise, epsilon 8 and epsilon 1 (noise calibrated for 300
  steps); the seeds' mean test accuracy is ordered by epsilon. (BENCHMARKS.md has the full 800-step table.)"""
  from maasjax.train.loop import train_and_evaluate
  means = {}
  for label, privacy in (('no noise', {'privacy.noise_multiplier': 0.0}), ('epsilon 8', {'privacy.target_epsilon': 8.0}),
                         ('epsilon 1', {'privacy.target_epsilon': 1.0})):
    accuracies = [train_and_evaluate(_dp(300, seed=seed, eval_every_steps=300, **{'checkpoint.every_steps': 300},
                                         **privacy), str(tmp_path / f'{label}-{seed}'))['test/accuracy']
                  for seed in (0, 1)]
    means[label] = float(np.mean(accuracies))
  assert means['no noise'] > means['epsilon 8'] > means['epsilon 1'], means
