"""Data, FSDP, tensor and 2-D (data x model) parallelism on 8 simulated CPU devices give the loss
curve of 1 device, with parameters placed as the rules say; and the rules' own errors and layouts."""
import json
import os
import re
import subprocess
import sys

import jax
import pytest
from jax.sharding import AbstractMesh

from maasjax import parallel, sharding
from maasjax.config import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
# Compiling, not running, is what these tiny models spend their time on: LLVM at -O0 halves it here.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def run_worker(jobs, devices: int, tmp_path, timeout: int = 600, name: str = 'out.json'):
  """Runs tests/mesh_worker.py with `devices` simulated CPU devices; returns its results."""
  out = tmp_path / name
  # JAX's default RNG mode, as users run it (the rest of the suite uses the classic mode: tests/conftest.py).
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS='cpu', XLA_FLAGS=FAST_COMPILE,
             JAX_THREEFRY_PARTITIONABLE='true')
  proc = subprocess.run([sys.executable, os.path.join(HERE, 'mesh_worker.py'), str(out), json.dumps(jobs)],
                        env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(out.read_text())
  assert result['device_count'] == devices
  return result['results']


# name -> (mesh, preset); the 1-device run is the reference.
MESHES = {
    'one_device': ({'data': 1}, 'replicate'),
    'data': ({'data': 8}, 'replicate'),
    'fsdp': ({'fsdp': 8}, 'fsdp'),
    'tensor': ({'model': 8}, 'tensor'),
    'data_x_model': ({'data': 4, 'model': 2}, 'tensor'),
}

# What the rules must have placed, read back from the live arrays' `.sharding`.
CNN_SPECS = {
    'data': {},  # everything replicated
    'fsdp': {'Conv_0/kernel': [None, None, None, 'fsdp'], 'Conv_0/bias': ['fsdp'],
             'Conv_1/kernel': [None, None, None, 'fsdp'], 'Conv_1/bias': ['fsdp'],
             'Dense_0/kernel': ['fsdp'], 'Dense_0/bias': ['fsdp'],
             'Dense_1/kernel': ['fsdp']},  # Dense_1/bias has 10 entries: not divisible by 8
    'tensor': {'Dense_0/kernel': [None, 'model'], 'Dense_0/bias': ['model'], 'Dense_1/kernel': ['model']},
    'data_x_model': {'Dense_0/kernel': [None, 'model'], 'Dense_0/bias': ['model'],
                     'Dense_1/kernel': ['model']},
}

# Megatron layout of the Transformer: heads (q/k/v outputs, attention-output inputs) and MLP hidden
# units over 'model'; the vocabulary of embedding and logits too when the axis divides it.
LM_TENSOR = [(r'attention/(query|key|value)/kernel$', [None, 'model']), (r'attention/(query|key|value)/bias$', ['model']),
             (r'attention/out/kernel$', ['model']), (r'mlp/wi/kernel$', [None, 'model']), (r'mlp/wi/bias$', ['model']),
             (r'mlp/wo/kernel$', ['model'])]
LM_VOCAB = [(r'embed/embedding$', ['model']), (r'logits/kernel$', [None, 'model']), (r'logits/bias$', ['model'])]


def lm_specs(name: str, run: dict) -> dict:
  """The placement the preset promises for each LM parameter, from its shape."""
  mesh, _ = MESHES[name]
  expected = {}
  vocab = run['param_shapes']['decoder/embed/embedding'][0]
  for path, shape in run['param_shapes'].items():
    spec = []
    if 'model' in mesh:
      table = LM_TENSOR + (LM_VOCAB if vocab % mesh['model'] == 0 else [])
      spec = next((s for pattern, s in table if re.search(pattern, path)), [])
    if 'fsdp' in mesh:  # the largest dimension 'fsdp' divides (the first of equals), if any
      free = [d for d, n in enumerate(shape) if n % mesh['fsdp'] == 0]
      if free:
        best = max(free, key=lambda d: (shape[d], -d))
        spec = [None] * best + ['fsdp']
    if spec:
      expected[path] = spec
  return expected


def strip(spec):
  """PartitionSpec as JSON, without trailing Nones: [] is replicated."""
  spec = list(spec)
  while spec and spec[-1] is None:
    spec.pop()
  return spec


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Both models on every mesh, in one 8-device process (one JAX start-up)."""
  jobs, models = [], ['cnn', 'lm']
  extras = {'cnn': [{'name': 'bf16_fsdp', 'mesh': {'fsdp': 8}, 'preset': 'fsdp'}],
            'lm': [{'name': 'bf16_data_x_model', 'mesh': {'data': 4, 'model': 2}, 'preset': 'tensor'}]}
  for model in models:
    extra = extras[model]
    cases = [{'name': name, 'model': model, 'mesh': mesh, 'preset': preset, 'steps': 3,
              **({'devices': 1, 'inspect': True} if name == 'one_device' else {}),
              # The LM's FSDP run also rematerialises its blocks: same numbers, less memory.
              **({'remat': True} if (model, name) == ('lm', 'fsdp') else {})}
             for name, (mesh, preset) in MESHES.items()]
    cases += [dict(c, model=model, steps=3, dtype='bfloat16', inspect=True) for c in extra]
    jobs.append({'do': 'cases', 'cases': cases})
  return dict(zip(models, run_worker(jobs, 8, tmp_path_factory.mktemp('meshes'))))


def model_runs(runs, model):
  return runs[model]


def check_moments_follow_parameters(run):
  for path, spec in run['opt_specs'].items():
    if '/mu/' in path or '/nu/' in path:
      param = path.split('/mu/')[-1].split('/nu/')[-1]
      assert strip(spec) == strip(run['param_specs'][param]), path


@pytest.mark.slow
@pytest.mark.parametrize('model', ['cnn', 'lm'])
@pytest.mark.parametrize('name', ['data', 'fsdp', 'tensor', 'data_x_model'])
def test_loss_curve_matches_one_device_and_parameters_are_placed(runs, model, name):
  ref, run = model_runs(runs, model)['one_device'], runs[model][name]
  assert ref['num_devices'] == 1 and run['num_devices'] == 8
  assert run['losses'] == pytest.approx(ref['losses'], rel=1e-5, abs=1e-6)
  assert ref['losses'][-1] < ref['losses'][0]  # it trained
  placed = {k: strip(v) for k, v in run['param_specs'].items() if strip(v)}
  expected = CNN_SPECS[name] if model == 'cnn' else lm_specs(name, run)
  assert placed == expected
  if name != 'data':
    assert placed  # something really is split
  check_moments_follow_parameters(run)


@pytest.mark.slow
def test_fsdp_holds_one_eighth_of_the_parameters_per_device(runs):
  for model in runs:
    replicated, fsdp = runs[model]['data'], runs[model]['fsdp']
    ratio = fsdp['param_bytes_per_device'] / replicated['param_bytes_per_device']
    # All but a few parameters whose sizes 8 does not divide (the CNN's 10 class biases) split 8 ways.
    assert 0.125 <= ratio < 0.14, model
    assert fsdp['opt_bytes_per_device'] / replicated['opt_bytes_per_device'] < 0.14, model


@pytest.mark.slow
@pytest.mark.parametrize('model,name', [('cnn', 'bf16_fsdp'), ('lm', 'bf16_data_x_model')])
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(runs, model, name):
  ref, bf16 = model_runs(runs, model)['one_device'], runs[model][name]
  assert ref['matmul_dtypes'] == ['f32']
  assert bf16['matmul_dtypes'] == ['bf16']  # every conv and matmul, forward and backward
  assert bf16['param_dtypes'] == ['float32'] and bf16['opt_dtypes'] == ['float32', 'int32']
  # No loss scaling: bf16 has float32's exponent range. The curve stays on the float32 one.
  assert bf16['losses'] == pytest.approx(ref['losses'], abs=2e-2)
  assert bf16['losses'] != ref['losses']


# ---- the rules themselves: cheap, on abstract parameters and an abstract mesh -------------------

def abstract(shapes: dict) -> dict:
  out = {}
  for path, shape in shapes.items():
    node = out
    *parents, last = path.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = jax.ShapeDtypeStruct(shape, 'float32')
  return out


MLP_PARAMS = abstract({'Dense_0/kernel': (64, 32), 'Dense_0/bias': (32,), 'Dense_1/kernel': (32, 32),
                       'Dense_1/bias': (32,), 'Dense_2/kernel': (32, 10), 'Dense_2/bias': (10,)})


def mesh(**sizes):
  return AbstractMesh(tuple(sizes.values()), tuple(sizes))


def spec_map(rules, params, m):
  """{param path: its PartitionSpec (stripped)} under `rules`, via parallel.param_shardings."""
  shardings = parallel.param_shardings(params, m, rules)
  return {name: strip(sh.spec) for (name, _), sh in zip(sharding.param_leaves(params), jax.tree.leaves(shardings))}


def spec_of(name, shape, rules, m):
  return spec_map(rules, abstract({name: shape}), m)[name]


def test_mlp_tensor_preset_pairs_column_then_row():
  m = mesh(data=2, model=4)
  specs = spec_map(sharding.preset_rules('tensor', 'mlp', MLP_PARAMS, m), MLP_PARAMS, m)
  assert specs == {'Dense_0/kernel': [None, 'model'], 'Dense_0/bias': ['model'], 'Dense_1/kernel': ['model'],
                   'Dense_1/bias': [], 'Dense_2/kernel': [], 'Dense_2/bias': []}


def test_fsdp_tensor_preset_adds_fsdp_to_the_other_dimension():
  m = mesh(fsdp=2, model=4)
  specs = spec_map(sharding.preset_rules('fsdp_tensor', 'mlp', MLP_PARAMS, m), MLP_PARAMS, m)
  assert specs['Dense_0/kernel'] == ['fsdp', 'model']
  assert specs['Dense_1/kernel'] == ['model', 'fsdp']
  assert specs['Dense_2/kernel'] == ['fsdp']  # replicated by tensor parallelism, split by FSDP
  assert specs['Dense_2/bias'] == ['fsdp']


def test_fsdp_preset_picks_largest_divisible_dimension_and_respects_min_size():
  params = abstract({'a/kernel': (6, 12), 'b/kernel': (3, 5), 'c/bias': (16,)})
  m = mesh(fsdp=4)
  specs = spec_map(sharding.preset_rules('fsdp', 'x', params, m), params, m)
  assert specs == {'a/kernel': [None, 'fsdp'], 'b/kernel': [], 'c/bias': ['fsdp']}
  specs = spec_map(sharding.preset_rules('fsdp', 'x', params, m, fsdp_min_size=20), params, m)
  assert specs == {'a/kernel': [None, 'fsdp'], 'b/kernel': [], 'c/bias': []}


def test_preset_rules_also_place_optimizer_state():
  m = mesh(fsdp=4)
  rules = sharding.preset_rules('fsdp', 'mlp', MLP_PARAMS, m)
  assert spec_of('0/mu/Dense_0/kernel', (64, 32), rules, m) == spec_of('Dense_0/kernel', (64, 32), rules, m) == [
      'fsdp']


def test_rule_that_does_not_fit_names_the_parameter():
  with pytest.raises(ConfigError, match=r"Dense_2/kernel.*\(32, 10\).*'model' of size 4"):
    spec_of('Dense_2/kernel', (32, 10), [('Dense_2/kernel', (None, 'model'))], mesh(model=4))
  with pytest.raises(ConfigError, match=r"mesh axis 'model'.*lacks.*Dense_0/kernel"):
    spec_of('Dense_0/kernel', (64, 32), [('Dense_0', (None, 'model'))], mesh(data=4))
  with pytest.raises(ConfigError, match=r'3 axes but parameter .*Dense_0/bias'):
    spec_of('Dense_0/bias', (32,), [('bias', (None, None, 'data'))], mesh(data=4))


def test_preset_errors_are_clear():
  with pytest.raises(ConfigError, match=r"preset='tensor'.*mesh axis 'model'.*config.mesh.model"):
    sharding.preset_rules('tensor', 'mlp', MLP_PARAMS, mesh(data=8))
  with pytest.raises(ConfigError, match=r"model 'resnet' has no tensor-parallel layout"):
    sharding.preset_rules('tensor', 'resnet', MLP_PARAMS, mesh(model=2))
  with pytest.raises(ConfigError, match=r"preset='zero3': expected one of replicate, fsdp"):
    sharding.preset_rules('zero3', 'mlp', MLP_PARAMS, mesh(data=2))


def test_config_rules_win_and_stray_patterns_are_refused(config_factory):
  config = config_factory('digits_mlp', **{'sharding.preset': 'fsdp',
                                           'sharding.rules': (('Dense_0/kernel', ('fsdp', None)),)})
  m = mesh(fsdp=2)
  rules = sharding.plan(config)(MLP_PARAMS, m)
  specs = spec_map(rules, MLP_PARAMS, m)
  assert specs['Dense_0/kernel'] == ['fsdp']  # the preset alone would pick the same; check the order:
  assert rules[0] == ('Dense_0/kernel', ('fsdp', None))
  config = config_factory('digits_mlp', **{'sharding.rules': (('Dense_9/kernel', ('fsdp', None)),)})
  with pytest.raises(ConfigError, match=r"'Dense_9/kernel' matches no parameter of model 'mlp'"):
    sharding.plan(config)(MLP_PARAMS, m)
