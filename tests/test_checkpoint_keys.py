"""What a resume may change: structural_diff refuses only what changes state shapes, the data order or,
for a DP run, the privacy guarantee it reports."""
import json

import pytest

from conftest import experiment_config
from maasjax.train.checkpoint import structural_diff


def _json(name, **overrides):
  return json.loads(experiment_config(name, **overrides).to_json_best_effort())


def test_shape_free_model_keys_resume_and_shape_keys_do_not():
  saved = _json('digits_transformer')
  for key, value in (('model.dropout', 0.3), ('model.attention_dropout', 0.2), ('model.remat', True),
                     ('dtype', 'bfloat16'), ('optimizer.learning_rate', 5e-4), ('num_train_steps', 7)):
    assert structural_diff(saved, _json('digits_transformer', **{key: value})) == [], key
  for key, value in (('model.emb_dim', 32), ('model.positions', 'rotary'), ('optimizer.name', 'sgd'),
                     ('batch_size', 17), ('seed', 3), ('dataset.validation_fraction', 0.2)):
    assert [d.split(':')[0] for d in structural_diff(saved, _json('digits_transformer', **{key: value}))] == [key]


def test_privacy_keys_are_free_without_dp_and_fixed_with_it():
  plain = _json('digits_mlp')
  assert structural_diff(plain, _json('digits_mlp', **{'privacy.noise_multiplier': 3.0})) == []
  with_dp = _json('digits_mlp', **{'privacy.enabled': True})
  assert structural_diff(plain, with_dp) == ['privacy.enabled: checkpoint has False, config has True']
  private = _json('digits_mlp_dp')
  assert private['privacy']['enabled']
  for key, value in (('privacy.noise_multiplier', private['privacy']['noise_multiplier'] * 2),
                     ('privacy.l2_norm_clip', 0.25), ('privacy.sampling', 'fixed')):
    diffs = structural_diff(private, _json('digits_mlp_dp', **{key: value}))
    assert len(diffs) == 1 and diffs[0].startswith(f'{key}: checkpoint has'), (key, diffs)
  assert structural_diff(private, _json('digits_mlp_dp', **{'privacy.accountant': 'pld'})) == []


@pytest.mark.parametrize('target,refused', [(0.0, False), (3.0, True)])
def test_calibrated_noise_fixes_the_number_of_steps(target, refused):
  saved = _json('digits_mlp_dp', **{'privacy.target_epsilon': target})
  longer = _json('digits_mlp_dp', **{'privacy.target_epsilon': target, 'num_train_steps': 10_000})
  assert bool(structural_diff(saved, longer)) == refused
