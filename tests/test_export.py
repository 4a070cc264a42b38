"""Export: SavedModels in TF Serving's layout, reloaded in a plain TF process, agree with JAX within 1e-5;
an export that does not reproduce JAX is refused and leaves nothing behind."""
import json
import os

import numpy as np
import pytest

from serve_fixtures import jax_reference, heldout_digits
from maasjax.config import ConfigError
from maasjax.export import layout
from maasjax.export.exporter import ParityError, compare, export_workdir, run_in_plain_tf


@pytest.mark.parametrize('model', ['digits', 'digits_resnet'])
def test_savedmodel_in_plain_tf_matches_jax(exported, model):
  # 7 examples: a batch size never used at export, so the batch axis must really be polymorphic.
  x = heldout_digits(7)
  ref = jax_reference(exported['workdirs'][model], x)
  got = run_in_plain_tf(os.path.join(exported['base'], model, '1'), {'serving_default/inputs': x})
  for name in ('logits', 'probabilities'):
    diff = np.max(np.abs(got[f'serving_default/{name}'] - ref[name]))
    print(f'{model} {name} max abs diff {diff:.3g}')
    assert diff <= 1e-5
  np.testing.assert_array_equal(got['serving_default/classes'], ref['classes'])
  np.testing.assert_array_equal(got['serving_default/classes'], np.argmax(ref['logits'], -1))
  assert got['serving_default/top_k_classes'].shape == (7, 5)


def test_layout_and_metadata(exported):
  base = exported['base']
  assert layout.list_models(base) == ['digits', 'digits_resnet']
  for model in ('digits', 'digits_resnet'):
    vdir = os.path.join(base, model, '1')
    assert os.path.exists(os.path.join(vdir, 'saved_model.pb'))
    assert not [d for d in os.listdir(os.path.join(base, model)) if d.startswith('.tmp')]  # no leftovers
    meta = layout.read_metadata(vdir)
    assert meta['task'] == 'classification' and meta['version'] == 1
    assert meta['platforms'] == ['cpu', 'cuda', 'tpu']
    assert meta['signatures']['serving_default']['inputs']['inputs'] == {
        'shape': [-1, 8, 8, 1], 'dtype': 'float32', 'finite': True}
    assert meta['label_names'] == [str(i) for i in range(10)]
    assert 'test/accuracy' in meta['metrics'] and 'jax' in meta['library_versions']
    assert meta['checkpoint']['step'] == 20
    # The parity block says what was checked: 64 held-out digits (rows), every output, the bound used.
    assert meta['parity']['num_examples'] == 64
    assert meta['parity']['examples'] == {'serving_default': {'num_examples': 64, 'unit': 'rows'}}
    assert sorted(meta['parity']['max_abs_diff']) == [f'serving_default/{k}' for k in sorted(
        meta['signatures']['serving_default']['outputs'])] and meta['parity']['tolerance'] == {'serving_default': 1e-5}
    assert meta['signatures']['serving_default']['outputs']['logits']['shape'] == [-1, 10]
    assert meta['signatures']['serving_default']['outputs']['classes']['shape'] == [-1]
    assert 'tokenizer' not in meta  # images: no vocabulary
  assert exported['results']['digits'].max_abs_diff == layout.read_metadata(
      os.path.join(base, 'digits', '1'))['parity']['max_abs_diff']
  assert exported['results']['digits'].version == 1
  assert layout.next_version(os.path.join(base, 'digits')) == 2


def test_models_catalog_cli(exported, capsys):
  from maasjax import cli
  assert cli.main(['models', '--model-base-path', exported['base'], '--json']) == 0
  entries = json.loads(capsys.readouterr().out)
  assert [(e['name'], e['version']) for e in entries] == [('digits', 1), ('digits_resnet', 1)]
  assert entries[0]['inputs'] == {'inputs': {'shape': [-1, 8, 8, 1], 'dtype': 'float32'}}
  assert entries[0]['size_bytes'] > 10_000 and 0 <= entries[0]['metrics']['test/accuracy'] <= 1
  assert cli.main(['models', '--model-base-path', exported['base']]) == 0
  assert 'digits_resnet' in capsys.readouterr().out


def test_existing_version_and_bad_name_are_refused(exported, capsys):
  from maasjax import cli
  workdir = exported['workdirs']['digits']
  assert cli.main(['export', '--workdir', workdir, '--model-name', 'digits', '--version', '1',
                   '--out', exported['base']]) == 2
  assert 'already exists' in capsys.readouterr().err
  assert cli.main(['export', '--workdir', workdir, '--model-name', 'bad/name', '--out', exported['base']]) == 2
  assert 'model name' in capsys.readouterr().err
  assert cli.main(['export', '--workdir', workdir + '-missing', '--model-name', 'x', '--out', exported['base']]) == 2
  assert 'does not exist' in capsys.readouterr().err
  assert cli.main(['export', '--workdir', workdir, '--model-name', 'x', '--step', '999', '--out', exported['base']]) == 2
  err = capsys.readouterr().err
  assert 'step 999 is not a checkpoint' in err and 'its saved steps: ' in err and err.count('\n') == 1, err
  assert not os.path.exists(os.path.join(exported['base'], 'x'))


def test_export_refuses_a_savedmodel_that_does_not_reproduce_jax(exported, monkeypatch):
  """A perturbed weight in the SavedModel (the JAX reference keeps the true one): refused, nothing published."""
  import jax
  import orbax.export
  from maasjax.config import from_json
  real = orbax.export.JaxModule

  def perturbed(variables, *args, **kwargs):
    leaves, tree = jax.tree.flatten(variables)
    leaves[-1] = leaves[-1] + 1e-2  # one weight array off by 1e-2: far beyond fp32 round-off
    return real(jax.tree.unflatten(tree, leaves), *args, **kwargs)

  monkeypatch.setattr(orbax.export, 'JaxModule', perturbed)
  workdir, base = exported['workdirs']['digits'], exported['base']
  with open(os.path.join(workdir, 'config.json')) as f:
    config = from_json(f.read())
  with pytest.raises(ParityError, match=r'refused(.|\n)*serving_default/logits: max abs difference \S+ > \S+'):
    export_workdir(config, workdir, 'digits', base, parity_examples=8, platforms=('cpu',))
  assert layout.list_versions(os.path.join(base, 'digits')) == [1]  # version 2 was never published
  assert not [d for d in os.listdir(os.path.join(base, 'digits')) if d.startswith('.tmp')]


def test_compare_reports_each_output_over_its_bound():
  ref = {'s/logits': np.zeros((2, 3), np.float32), 's/classes': np.array([1, 2])}
  diffs, failures = compare(ref, {'s/logits': np.full((2, 3), 3e-5, np.float32), 's/classes': np.array([1, 0])},
                            {'s': 1e-5})
  assert diffs['s/logits'] == pytest.approx(3e-5) and diffs['s/classes'] == 1
  assert len(failures) == 2 and 'max abs difference 3e-05 > 1e-05' in failures[1]
  _, failures = compare(ref, dict(ref), {'s': 1e-5})
  assert failures == []
  big = {'s/logits': np.full((2, 3), 30.0, np.float32)}  # the bound scales with the output: 1e-5 x 30
  assert compare(big, {'s/logits': big['s/logits'] + 2e-4}, {'s': 1e-5})[1] == []
  (failure,) = compare(big, {'s/logits': big['s/logits'] + 5e-4}, {'s': 1e-5})[1]
  assert '> 0.0003 (1e-05 x its largest |value| 30)' in failure


def test_model_name_check():
  with pytest.raises(ConfigError, match='model name'):
    layout.check_model_name('../etc')
  assert layout.check_model_name('digits_cnn-2.v1') == 'digits_cnn-2.v1'
