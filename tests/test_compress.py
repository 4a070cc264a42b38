"""Compression: each method really changes the model (zeros stay zero, int8 arrays really int8 in the SavedModel,
fewer parameters really fewer, folded outputs equal), and a compressed workdir evaluates, exports with parity
and serves over HTTP like any model."""
import json
import os
import shutil

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tritonclient.http as tritonclient_http

from conftest import experiment_config
from serve_fixtures import ServerProcess, heldout_digits, jax_reference
from maasjax import cli
from maasjax.compress.pruning import named_leaves, nm_mask, prune_optimizer
from maasjax.compress.settings import PruneSettings
from maasjax.compress.workdir import compress_workdir
from maasjax.config import load_workdir_config
from maasjax.train.loop import restore_latest, train_and_evaluate

STEPS = 20


def _train(name: str, workdir: str, **overrides) -> str:
  config = experiment_config(name, num_train_steps=STEPS, **{'optimizer.warmup_steps': 5,
                                                             'checkpoint.every_steps': STEPS, **overrides})
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp('compress')
  return {'root': root, 'cnn': _train('digits_cnn', str(root / 'cnn')),
          'resnet': _train('digits_resnet', str(root / 'resnet'))}


def _compress(trained, method: str, name: str, **settings) -> tuple[str, dict]:
  out = str(trained['root'] / name)
  overrides = [(f'compress.{k}', str(v)) for k, v in settings.items()]
  source = trained['resnet'] if method == 'fold' else trained['cnn']
  return out, compress_workdir(source, out, method, overrides, measure_latency=False, verbose=False)


def _state(workdir: str):
  return restore_latest(load_workdir_config(workdir), workdir)[1]


def _zeros(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) == 0 for k, v in named_leaves(jax.device_get(tree)).items()}


def test_pruning_optimizer_masks_in_state_and_pruned_weights_stay_zero():
  params = {'dense': {'kernel': jax.random.normal(jax.random.key(0), (16, 8)), 'bias': jnp.ones(8)},
            'conv': {'kernel': jax.random.normal(jax.random.key(1), (3, 3, 8, 4))}}
  settings = PruneSettings(0.75, 'unstructured', 'uniform', 'gradual', start_step=2, end_step=8, update_every=2,
                           overrides=())
  tx = prune_optimizer(optax.adam(0.05), settings)
  state, p = tx.init(params), params
  update = jax.jit(tx.update)
  sparsities, before = [], {}
  for step in range(12):
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), p)  # pushes every weight, pruned ones included
    updates, state = update(grads, state, p)
    p = optax.apply_updates(p, updates)
    zeros = _zeros(p)
    sparsities.append(float(np.mean(zeros['dense/kernel'])))
    for name, was_zero in before.items():  # once pruned, always zero (the masks only grow)
      assert np.all(zeros[name][was_zero]), (step, name)
    before = {k: zeros[k] for k in ('dense/kernel', 'conv/kernel')}
    np.testing.assert_array_equal(np.asarray(state.masks['dense']['kernel']), ~zeros['dense/kernel'])
  # Cubic schedule from step 2 to 8: nothing before, 75% from step 8 on, never a bias.
  assert sparsities[:2] == [0.0, 0.0] and 0 < sparsities[4] < 0.75 and sparsities[8:] == [0.75] * 4
  assert not _zeros(p)['dense/bias'].any() and float(np.mean(_zeros(p)['conv/kernel'])) == 0.75

  two_four = nm_mask(jnp.abs(params['conv']['kernel']), 2, 4)  # 2 of every 4 along the input axis (8 -> 2 x 4)
  groups = np.moveaxis(np.asarray(two_four), -2, -1).reshape(-1, 4)
  assert (groups.sum(axis=1) == 2).all()


def test_prune_workdir_is_sparse_smaller_and_resumes_with_its_masks(trained, capsys):
  out, summary = _compress(trained, 'prune', 'pruned', sparsity=0.8, distribution='uniform', fine_tune_steps=12,
                           end_step=6, update_every=2)
  block = summary['compression']
  zeros = _zeros(_state(out).params)
  for name in ('Conv_1/kernel', 'Dense_0/kernel', 'Dense_1/kernel'):
    assert abs(np.mean(zeros[name]) - 0.8) < 0.01, name
  assert not zeros['Dense_0/bias'].all()
  assert block['nonzero_params'] < 0.3 * block['params'] and block['params'] == block['baseline']['params']
  assert block['gzip_bytes'] < 0.5 * block['baseline']['gzip_bytes']  # zeros compress
  assert block['settings']['sparsity'] == 0.8 and block['settings']['fine_tune_steps'] == 12
  # eval takes the workdir alone; training further restores the masks from the checkpoint: same zeros.
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', out]) == 0
  assert json.loads(capsys.readouterr().out)['test/accuracy'] == summary['test/accuracy']
  config = load_workdir_config(out)
  config.num_train_steps = 16
  train_and_evaluate(config, out)
  after = _zeros(_state(out).params)
  for name in ('Conv_1/kernel', 'Dense_0/kernel'):
    np.testing.assert_array_equal(after[name], zeros[name])


def test_channels_removes_units_and_cut_removes_a_stage(trained):
  out, summary = _compress(trained, 'channels', 'channels', fraction=0.5, fine_tune_steps=4)
  params = _state(out).params
  assert load_workdir_config(out).model.features == [16, 32] and load_workdir_config(out).model.dense == 128
  assert params['Conv_1']['kernel'].shape == (3, 3, 16, 32) and params['Dense_0']['kernel'].shape == (128, 128)
  assert summary['compression']['params'] < 0.3 * summary['compression']['baseline']['params']

  cut, cut_summary = _compress(trained, 'cut', 'cut', layers='(1,)', fine_tune_steps=4)
  assert load_workdir_config(cut).model.features == [32]
  assert cut_summary['compression']['reinitialized'] == ['Dense_0/kernel']  # Conv_0 and Dense_1 carried over
  assert 'Conv_1' not in _state(cut).params


def test_fold_resnet_outputs_equal_and_no_batchnorm_left(trained):
  out, summary = _compress(trained, 'fold', 'folded')
  state = _state(out)
  assert not any('BatchNorm' in k or '_norm' in k for k in named_leaves(state.params)) and state.model_state == {}
  x = heldout_digits(64)
  ref, got = jax_reference(trained['resnet'], x), jax_reference(out, x)
  assert np.max(np.abs(got['logits'] - ref['logits'])) <= 1e-5
  assert summary['compression']['max_abs_diff_logits'] <= 1e-5
  assert summary['test/accuracy'] == pytest.approx(summary['compression']['baseline']['test/accuracy'])


def test_distillation_loss_follows_the_teacher(trained):
  from maasjax.compress.distill import DistillationTask
  from maasjax.data import load_dataset
  from maasjax.train.task_table import get_task
  task = DistillationTask(get_task(load_dataset(experiment_config('digits_cnn')).info), trained['cnn'], 2.0, 1.0)
  student_BxC = jnp.array([[2.0, 0.0, -1.0] + [0.0] * 7, [0.0, 1.0, 0.0] + [0.0] * 7])
  batch = {'labels': jnp.array([0, 1])}
  same, _ = task.loss_and_sums((student_BxC, student_BxC, None), batch)
  other, sums = task.loss_and_sums((student_BxC, student_BxC[::-1], None), batch)
  assert float(same) == pytest.approx(0.0, abs=1e-6) and float(other) > 0.1 and float(sums['distill_kl']) > 0
  hard, _ = task.loss_and_sums(student_BxC, batch)  # evaluation: the hard-label loss alone
  assert float(hard) > 0.1


def test_mixup_distillation_teacher_labels_the_students_mixed_inputs(trained):
  from maasjax.compress.distill import DistillationTask
  from maasjax.data import load_dataset
  from maasjax.train.task_table import get_task
  base = get_task(load_dataset(experiment_config('digits_cnn')).info)
  task = DistillationTask(base, trained['cnn'], 1.0, 1.0, mixup=1.0)
  exp, variables = task.teacher()
  x = jnp.asarray(heldout_digits(8))
  batch = {'inputs': x, 'labels': jnp.arange(8) % 10}
  student_BxC, teacher_BxC, lam_B = task.forward(exp.model, variables, batch, train=True,
                                                 rngs={'dropout': jax.random.key(0)})
  assert lam_B.shape == (8,) and 0 < float(lam_B.min()) and float(lam_B.max()) < 1
  mixed = lam_B[:, None, None, None] * x + (1 - lam_B[:, None, None, None]) * jnp.roll(x, 1, axis=0)
  want = base.forward(exp.model, variables, {'inputs': mixed}, train=False)
  clean = base.forward(exp.model, variables, {'inputs': x}, train=False)
  assert np.max(np.abs(np.asarray(teacher_BxC - want))) < 1e-4 < np.max(np.abs(np.asarray(teacher_BxC - clean)))
  # Without the teacher (alpha 0) the hard loss is each mixed input's lam-weighted pair of cross-entropies.
  hard_only = DistillationTask(base, '', 1.0, 0.0, mixup=1.0)
  loss, _ = hard_only.loss_and_sums((student_BxC, None, lam_B), batch)
  ce = lambda labels: optax.softmax_cross_entropy_with_integer_labels(student_BxC, labels)
  want_loss = jnp.mean(lam_B * ce(batch['labels']) + (1 - lam_B) * ce(jnp.roll(batch['labels'], 1)))
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
  assert abs(float(loss) - float(jnp.mean(ce(batch['labels'])))) > 1e-3


def test_distilled_student_serves_without_its_teacher(trained):
  teacher = str(trained['root'] / 'teacher_copy')
  shutil.copytree(trained['cnn'], teacher)
  out = str(trained['root'] / 'student')
  summary = compress_workdir(teacher, out, 'distill', [('compress.student', 'features=(8, 16), dense=32'),
                                                       ('compress.fine_tune_steps', '6')],
                             measure_latency=False, verbose=False)
  assert summary['compression']['params'] * 4 <= summary['compression']['baseline']['params']
  assert load_workdir_config(out).compress.teacher == os.path.abspath(teacher)
  shutil.rmtree(teacher)
  assert cli.main(['eval', '--workdir', out]) == 0


def test_bad_settings_exit_2_and_write_nothing(trained, capsys):
  cases = [('prune', trained['cnn'], ['--config.compress.sparsity=1.5'], 'config.compress.sparsity=1.5'),
           ('prune', trained['cnn'], ['--config.compress.pattern=4:2'], 'N < M'),
           ('fold', trained['cnn'], [], "model 'cnn' has no BatchNorm"),
           ('channels', trained['resnet'], [], "model 'resnet' is not supported"),
           ('cut', trained['cnn'], ['--config.compress.layers=(5,)'], 'indices 0..1'),
           ('quantize', trained['cnn'], ['--config.compress.mode=int4'], 'unknown quantization mode'),
           ('distill', trained['cnn'], ['--config.compress.student=dense=32', '--config.compress.mixup=-1'],
            'config.compress.mixup=-1')]
  for method, source, extra, fragment in cases:
    out = str(trained['root'] / f'bad_{method}')
    assert cli.main(['compress', '--workdir', source, '--method', method, '--out', out, *extra]) == 2, method
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(out)
  assert cli.main(['compress', '--workdir', trained['cnn'], '--method', 'prune', '--out', trained['resnet']]) == 2
  assert 'not empty' in capsys.readouterr().err


def test_int8_and_channel_pruned_workdirs_export_with_parity_and_serve(trained):
  import tensorflow as tf
  # QAT: a short fine-tune through fake-quantized int8 ops (OUT/qat), then the same calibrated conversion as PTQ.
  q, q_summary = _compress(trained, 'quantize', 'int8', mode='qat', fine_tune_steps=3)
  assert load_workdir_config(os.path.join(q, 'qat')).model.quantization == 'int8_qat'
  assert load_workdir_config(q).model.quantization == 'int8' and q_summary['compression']['fine_tune_steps'] == 3
  ch = str(trained['root'] / 'channels')  # from the channels test when it ran first, else made here
  if not os.path.exists(ch):
    ch, _ = _compress(trained, 'channels', 'channels', fraction=0.5, fine_tune_steps=4)
  assert q_summary['test/accuracy'] >= q_summary['compression']['baseline']['test/accuracy'] - 0.05
  base = str(trained['root'] / 'exports')
  for workdir, name in ((q, 'digits_int8'), (ch, 'digits_small')):
    assert cli.main(['export', '--workdir', workdir, '--model-name', name, '--out', base]) == 0  # parity checked
  # The SavedModel's variables are int8 (+ float scales and biases), >= 3.5x smaller than float32 weights.
  reader = tf.train.load_checkpoint(os.path.join(base, 'digits_int8', '1', 'variables', 'variables'))
  dtypes = reader.get_variable_to_dtype_map()
  shapes = reader.get_variable_to_shape_map()
  int8_values = sum(int(np.prod(shapes[k])) for k, d in dtypes.items() if d == tf.int8)
  float_values = sum(int(np.prod(shapes[k])) for k, d in dtypes.items() if d == tf.float32)
  assert int8_values > 20 * float_values
  float_bytes = 4 * q_summary['compression']['baseline']['params']
  variables_dir = os.path.join(base, 'digits_int8', '1', 'variables')
  assert 3.5 * sum(os.path.getsize(os.path.join(variables_dir, f)) for f in os.listdir(variables_dir)) <= float_bytes
  x = heldout_digits(5)
  refs = {'digits_int8': jax_reference(q, x), 'digits_small': jax_reference(ch, x)}
  srv = ServerProcess(base)
  try:
    for name, ref in refs.items():  # TF-Serving-style REST and tritonclient, as for any model
      preds = httpx.post(f'{srv.url}/v1/models/{name}:predict', json={'instances': x.tolist()}, timeout=30).json()
      np.testing.assert_allclose([p['logits'] for p in preds['predictions']], ref['logits'], atol=1e-5)
      client = tritonclient_http.InferenceServerClient(srv.url[len('http://'):])
      inp = tritonclient_http.InferInput('inputs', list(x.shape), 'FP32')
      inp.set_data_from_numpy(x)
      np.testing.assert_array_equal(client.infer(name, [inp]).as_numpy('classes'), ref['classes'])
  finally:
    srv.stop()


def test_report_tables_and_plot_with_the_baseline_marked(trained):
  from maasjax.compress.report import write_report
  out = str(trained['root'] / 'report')
  variants = (('int8_ptq', 'quantize', {'mode': 'ptq'}, None), ('fold', 'fold', {}, None))
  paths = write_report(trained['cnn'], out, [('compress.calibration_batches', '1')], measure_latency=False,
                       variants=variants)
  assert [os.path.basename(p) for p in paths] == [f'compression_report.{e}' for e in ('md', 'json', 'png')]
  report = json.load(open(paths[1]))
  assert [r['variant'] for r in report['rows']] == ['dense baseline', 'int8_ptq']
  assert report['rows'][1]['bytes'] * 3 < report['rows'][0]['bytes']
  assert report['skipped'][0]['variant'] == 'fold' and 'no BatchNorm' in report['skipped'][0]['why']
  table = open(paths[0]).read()
  assert '| dense baseline |' in table and '| int8_ptq |' in table and os.path.getsize(paths[2]) > 10_000
