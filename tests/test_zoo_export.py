"""Model-zoo families through `maasjax export` (parity in a plain TF process) and `maasjax serve`.

Graph models take padded graph arrays as named inputs (not batchable); the LM adds a KV-cached
`generate` signature. (Seq2seq, RNN and token classifiers export the same way; each export costs
~20 s here, so the suite checks these two kinds of signature; benchmarks/model_zoo.py runs the rest.)
"""

import jax
import numpy as np
import pytest

from conftest import experiment_config
from maasjax.export import layout
from maasjax.export.exporter import export_workdir
from maasjax.train.loop import restore_latest, train_and_evaluate

TINY = {'num_layers': 1, 'emb_dim': 32, 'mlp_dim': 64, 'num_heads': 2}


def _config(name):
  config = experiment_config(name, num_train_steps=3, log_every_steps=3, eval_every_steps=3)
  config.optimizer.warmup_steps = 0
  config.model.update({k: v for k, v in TINY.items() if k in config.model})
  if name == 'char_lm':
    config.dataset.seq_len = 32
    config.model.update(max_len=64, attention_window=32)  # generate: 32-token prompts + 32 new tokens
  return config


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
  root = tmp_path_factory.mktemp('zoo')
  base, out = str(root / 'models'), {}
  for name in ('karate_gcn', 'char_lm'):
    config, workdir = _config(name), str(root / name)
    train_and_evaluate(config, workdir)
    out[name] = (config, workdir, export_workdir(config, workdir, name.replace('_', '-'), base, parity_examples=8,
                                                 platforms=('cpu',)))
  return base, out


@pytest.mark.slow
def test_every_family_exports_with_truthful_metadata(zoo):
  """The metadata says what was checked and what a client may send and will get back."""
  base, out = zoo
  signatures = {}
  for name, (_, _, result) in out.items():
    meta = layout.read_metadata(result.path)
    signatures[name] = {s: sorted(v['inputs']) for s, v in meta['signatures'].items()}
    assert sorted(meta['parity']['max_abs_diff']) == sorted(result.max_abs_diff)
  assert signatures['karate_gcn'] == {'serving_default': ['edges', 'n_edge', 'n_node', 'nodes', 'receivers', 'senders']}
  assert signatures['char_lm'] == {'serving_default': ['tokens'], 'generate': ['seed', 'temperature', 'tokens']}
  meta = layout.read_metadata(out['karate_gcn'][2].path)
  sig = meta['signatures']['serving_default']
  assert sig['batchable'] is False
  assert meta['task'] == 'node_classification' and meta['platforms'] == ['cpu']
  # One graph of 34 nodes was checked: the parity counts graphs, not the first input's (node) axis.
  assert meta['parity']['num_examples'] == 1 and out['karate_gcn'][2].num_examples == 1
  assert meta['parity']['examples'] == {'serving_default': {'num_examples': 1, 'unit': 'graphs'}}
  assert sig['outputs']['logits']['shape'] == [-1, 2] and sig['outputs']['classes']['shape'] == [-1]  # per node
  lm = layout.read_metadata(out['char_lm'][2].path)
  vocab = lm['signatures']['serving_default']['inputs']['tokens']['high'] + 1
  assert lm['parity']['examples'] == {'serving_default': {'num_examples': 8, 'unit': 'rows'},
                                      'generate': {'num_examples': 8, 'unit': 'rows'}}
  # Logits follow the request's length; generated tokens have the export's fixed count.
  assert lm['signatures']['serving_default']['outputs']['logits']['shape'] == [-1, -1, vocab]
  assert lm['signatures']['generate']['outputs']['tokens']['shape'][0] == -1
  assert lm['signatures']['generate']['outputs']['tokens']['shape'][1] > 0
  assert lm['signatures']['generate']['inputs']['temperature']['low'] == 0
  # The vocabulary a client needs, and the rule stated in it, reproduce the training tokenizer.
  tok = lm['tokenizer']
  assert tok['kind'] == 'char' and tok['vocab_size'] == vocab and tok['pad_id'] == 0
  assert tok['rule'].startswith(f'id = index of the character in "chars" + {tok["offset"]}; 0 is padding')
  text = tok['chars'][::-1][:20]
  config, workdir, _ = out['char_lm']
  exp, _, _ = restore_latest(config, workdir)
  from maasjax.tokenizers import tokenizer_from_info
  assert [tok['chars'].index(c) + tok['offset'] for c in text] == tokenizer_from_info(exp.dataset.info).encode(
      text).tolist()
  assert sorted(layout.list_models(base)) == ['char-lm', 'karate-gcn']


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore:Using `httpx` with `starlette.testclient`')  # starlette's, not ours
def test_serve_graph_arrays_and_lm_generate(zoo):
  from fastapi.testclient import TestClient
  from maasjax.models import decoding
  from maasjax.serve.app import ServeSettings
  from maasjax.serve.server import build
  base, out = zoo
  # Reference values straight from the training code.
  config, workdir, _ = out['karate_gcn']
  exp, state, _ = restore_latest(config, workdir)
  graph = exp.dataset.train_batch(0, 1)
  ref_logits = np.asarray(jax.jit(lambda p, b: exp.task.forward(exp.model, {'params': p}, b, train=False))(
      state.params, graph))
  config, workdir, _ = out['char_lm']
  lm_exp, lm_state, _ = restore_latest(config, workdir)
  prompt = np.zeros((2, 32), np.int32)
  prompt[0, -5:] = lm_exp.dataset.train_batch(0, 1)['inputs'][0, :5]  # a 5-character prompt, left-padded
  prompt[1, -8:] = lm_exp.dataset.train_batch(1, 1)['inputs'][0, :8]
  ref_tokens = np.asarray(decoding.lm_generate(lm_exp.model, lm_state.params, prompt, 32, jax.random.key(0)))

  app, repo = build(base, ServeSettings(buckets=(1,), max_batch_size=4))
  repo.poll()  # load both now: a server loads them in the background, answering 503 meanwhile
  with TestClient(app) as client:
    body = {'inputs': {k: np.asarray(graph[k]).tolist() for k in ('nodes', 'edges', 'senders', 'receivers',
                                                                   'n_node', 'n_edge')}}
    r = client.post('/v1/models/karate-gcn:predict', json=body)
    assert r.status_code == 200, r.text
    outputs = r.json()['outputs']
    np.testing.assert_allclose(outputs['logits'], ref_logits, atol=1e-4)
    assert np.array(outputs['classes']).shape == (34,)
    # Two prompts in one request, greedy (temperature 0): the served KV-cached decoder gives the library's tokens.
    r = client.post('/v1/models/char-lm:predict', json={
        'signature_name': 'generate',
        'instances': [{'tokens': p.tolist(), 'temperature': 0.0, 'seed': 7} for p in prompt]})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.array(r.json()['predictions']), ref_tokens)
    # A mis-shaped graph request is refused with a message, not a crash.
    bad = dict(body['inputs'], nodes=[[0.0] * 5])
    r = client.post('/v1/models/karate-gcn:predict', json={'inputs': bad})
    assert r.status_code == 400 and 'nodes' in r.text
    # Token ids outside the vocabulary and negative temperatures: 400 naming the input and the range.
    vocab = int(lm_exp.dataset.info.num_classes)
    for value in (vocab + 230, -5):
      r = client.post('/v1/models/char-lm:predict', json={'instances': [[5, 6, value]]})
      assert r.status_code == 400, r.text
      assert r.json()['error'] == (f"input 'tokens': value {value} is outside the allowed range [0, {vocab - 1}]")
    r = client.post('/v1/models/char-lm:predict', json={'signature_name': 'generate', 'instances': [
        {'tokens': prompt[0].tolist(), 'temperature': -1.0, 'seed': 7}]})
    assert r.status_code == 400 and r.json()['error'] == "input 'temperature': value -1 is outside the allowed range >= 0"
    assert client.post('/v1/models/char-lm:predict', json={'instances': [[5, 6, vocab - 1]]}).status_code == 200
    # The vocabulary where a REST client finds it: v2 model metadata `parameters`, v1 metadata.
    meta = client.get('/v2/models/char-lm').json()
    assert meta['parameters']['tokenizer'] == layout.read_metadata(out['char_lm'][2].path)['tokenizer']
    assert meta['parameters']['tokenizer']['vocab_size'] == vocab
    assert client.get('/v1/models/char-lm/metadata').json()['metadata']['tokenizer']['vocab_size'] == vocab
    assert {o['name']: o['shape'] for o in meta['outputs']}['logits'] == [-1, -1, vocab]


@pytest.mark.slow
def test_requests_of_new_shapes_reuse_a_few_warmed_up_buckets(zoo):
  """Sequence lengths from 1 to 40 and graphs of 3 to 39 nodes reach the compiled function only at padded
  shapes that were warmed up at load, and every answer equals the unpadded call's. (The SavedModel backend
  goes through the same padding: maasjax.serve.backends.LoadedModel.)"""
  backend = 'jax'
  from maasjax.serve.backends import BACKENDS
  base, out = zoo
  lm = BACKENDS[backend](out['char_lm'][2].path, 'char-lm', 1)
  gcn = BACKENDS[backend](out['karate_gcn'][2].path, 'karate-gcn', 1)
  seen, unpadded = [], {}
  for name, model in (('lm', lm), ('gcn', gcn)):
    unpadded[name] = inner = model.run.inner
    model.run.inner = lambda sig, x, inner=inner: seen.append(
        (sig, tuple(sorted((k, v.shape) for k, v in x.items())))) or inner(sig, x)
    model.warm_up([1, 2])
  warmed = set(seen)
  rng = np.random.default_rng(0)
  for length in (1, 3, 8, 9, 17, 31, 40):
    tokens = rng.integers(1, 20, size=(2, length)).astype(np.int32)
    got = lm.run('serving_default', {'tokens': tokens})['logits']
    assert got.shape[:2] == (2, length)
    np.testing.assert_allclose(got, unpadded['lm']('serving_default', {'tokens': tokens})['logits'], atol=1e-5)
  for n in (3, 20, 39):
    senders = np.arange(n - 1, dtype=np.int32)
    graph = {'nodes': np.eye(34, dtype=np.float32)[np.arange(n) % 34], 'edges': np.ones((2 * (n - 1), 1), np.float32),
             'senders': np.concatenate([senders, senders + 1]), 'receivers': np.concatenate([senders + 1, senders]),
             'n_node': np.array([n], np.int32), 'n_edge': np.array([2 * (n - 1)], np.int32)}
    got = gcn.run('serving_default', graph)['logits']
    assert got.shape == (n, 2)
    np.testing.assert_allclose(got, unpadded['gcn']('serving_default', graph)['logits'], atol=1e-5)
  requested = set(seen) - warmed
  assert not requested, requested  # no shape that was not compiled at load
