"""Transformer models: shapes, masks, causality, KV-cache decoding equal to uncached, remat, bf16."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maasjax.models import decoding
from maasjax.models.transformer import DecoderLM, EncoderClassifier, EncoderDecoder

KEY = jax.random.key(0)
SMALL = dict(num_layers=2, num_heads=4, emb_dim=32, mlp_dim=64, max_len=24, dropout=0.0)
TOKENS = jnp.array([[5, 6, 7, 8, 9, 0, 0], [3, 4, 5, 6, 7, 8, 9]], jnp.int32)


def init(model, *args):
  return jax.jit(model.init)(KEY, *args)['params']


_APPLIERS = {}


def applier(model):
  """jit(model.apply), one per model (eager flax would dispatch and compile op by op)."""
  if id(model) not in _APPLIERS:
    _APPLIERS[id(model)] = (model, jax.jit(lambda params, *args: model.apply({'params': params}, *args)))
  return _APPLIERS[id(model)][1]


@functools.lru_cache(maxsize=None)
def lm(positions='rotary'):
  model = DecoderLM(vocab_size=20, positions=positions, **SMALL)
  return model, init(model, TOKENS)


@functools.lru_cache(maxsize=None)
def seq2seq():
  model = EncoderDecoder(vocab_size=20, **SMALL)
  return model, init(model, TOKENS, TOKENS[:, :3])


def generate(model, params, prompts, n, temperature=0.0, top_k=0, use_cache=True, key=KEY, **kw):
  return jax.jit(lambda p, x: decoding.lm_generate(model, p, x, n, key, temperature, top_k, use_cache=use_cache,
                                                   **kw))(params, prompts)


def test_shapes_and_conventional_param_names():
  model, params = lm()
  assert applier(model)(params, TOKENS).shape == (2, 7, 20)
  layer = params['decoder']['layers_0']
  assert set(layer['attention']) == {'query', 'key', 'value', 'out'}
  assert layer['attention']['query']['kernel'].shape == (32, 4, 8)
  assert layer['attention']['out']['kernel'].shape == (4, 8, 32)
  assert set(layer['mlp']) == {'wi', 'wo'}
  ed, p = seq2seq()
  assert applier(ed)(p, TOKENS, TOKENS[:, :3]).shape == (2, 3, 20)
  assert {'attention', 'cross_attention', 'mlp'} <= set(p['decoder']['layers_1'])
  rows = jnp.ones((5, 8, 8, 1))
  clf = EncoderClassifier(num_classes=10, **SMALL)  # float features: one token per row
  p = init(clf, rows)
  assert applier(clf)(p, rows).shape == (5, 10)
  assert p['encoder']['input_projection']['kernel'].shape == (8, 32)


def test_causal_and_padding_masks():
  model, params = lm()
  apply = applier(model)
  base = apply(params, TOKENS)
  # Changing a later token leaves every earlier position's logits unchanged.
  changed = apply(params, TOKENS.at[1, 4].set(11))
  np.testing.assert_allclose(changed[1, :4], base[1, :4], atol=1e-6)
  assert np.abs(changed[1, 4:] - base[1, 4:]).max() > 1e-3
  # Right padding (id 0) changes nothing for the real tokens of row 0.
  longer = apply(params, jnp.pad(TOKENS, ((0, 0), (0, 5))))
  np.testing.assert_allclose(longer[0, :5], base[0, :5], atol=1e-5)
  # Encoder classifier over tokens and seq2seq: padding the inputs changes nothing either.
  clf = EncoderClassifier(vocab_size=20, num_classes=3, **SMALL)
  p, apply = init(clf, TOKENS), applier(clf)
  assert apply(p, TOKENS).shape == (2, 3)
  np.testing.assert_allclose(apply(p, jnp.pad(TOKENS, ((0, 0), (0, 3)))), apply(p, TOKENS), atol=1e-5)
  ed, p = seq2seq()
  apply = applier(ed)
  np.testing.assert_allclose(apply(p, jnp.pad(TOKENS, ((0, 0), (0, 4))), TOKENS[:, :3]),
                             apply(p, TOKENS, TOKENS[:, :3]), atol=1e-5)


def test_cached_step_logits_equal_full_forward():
  """Prefill 3 tokens, then feed one token at a time: each step's logits equal the full forward pass."""
  model, params = lm()
  tokens = TOKENS[1:]
  full = applier(model)(params, tokens)
  cache = decoding.init_cache(model, 1)
  positions_1xL = jnp.arange(7)[None]
  step = jax.jit(lambda c, x, pos: model.apply({'params': params, 'cache': c}, x, pos, decode=True,
                                               mutable=['cache']))
  logits, mutated = step(cache, tokens[:, :3], positions_1xL[:, :3])
  np.testing.assert_allclose(logits, full[:, :3], atol=1e-5)
  cache = mutated['cache']
  for t in range(3, 7):
    logits, mutated = step(cache, tokens[:, t:t + 1], positions_1xL[:, t:t + 1])
    cache = mutated['cache']
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)
  assert int(cache['decoder']['layers_0']['attention']['cache_index']) == 7


@pytest.mark.parametrize('positions,temperature,top_k', [('rotary', 0.8, 4), ('learned', 0.0, 0)],
                         ids=['rotary-top-k', 'learned-greedy'])
def test_kv_cache_decoding_equals_uncached(positions, temperature, top_k):
  model, params = lm(positions)
  prompts = jnp.array([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]], jnp.int32)  # left-padded
  cached = generate(model, params, prompts, 12, temperature, top_k)
  np.testing.assert_array_equal(cached, generate(model, params, prompts, 12, temperature, top_k, use_cache=False))
  assert cached.shape == (2, 12) and (cached != 0).all()  # padding is never generated
  # Left padding changes nothing: row 0 alone, unpadded, gives the same tokens.
  np.testing.assert_array_equal(generate(model, params, prompts[:1, 2:], 12, temperature, top_k)[0], cached[0])


def test_seq2seq_kv_cache_decoding_equals_uncached_and_teacher_forcing():
  model, params = seq2seq()
  run = jax.jit(lambda p, x, temperature, use_cache: decoding.seq2seq_generate(
      model, p, x, 10, jax.random.key(1), bos_id=1, temperature=temperature, use_cache=use_cache),
                static_argnums=(2, 3))
  np.testing.assert_array_equal(run(params, TOKENS, 1.0, True), run(params, TOKENS, 1.0, False))
  # Greedy decoding = argmax of the teacher-forced logits when fed its own outputs.
  greedy = run(params, TOKENS, 0.0, True)
  forced = applier(model)(params, TOKENS, jnp.concatenate([jnp.ones((2, 1), jnp.int32), greedy[:, :-1]], 1))
  np.testing.assert_array_equal(jnp.argmax(forced.at[:, :, 0].set(-jnp.inf), -1), greedy)


def test_eos_stops_a_row():
  model = DecoderLM(vocab_size=6, **SMALL)
  params = init(model, TOKENS % 6)
  out = np.asarray(generate(model, params, jnp.array([[3, 4], [5, 3]]), 20, 1.0, eos_id=2))
  assert (out == 2).any()  # with 5 tokens to choose from, EOS comes up in 20 samples
  for row in out:
    hits = np.flatnonzero(row == 2)
    if len(hits):  # after EOS: padding only
      assert (row[hits[0] + 1:] == 0).all()


def test_sample_logits_top_k_and_greedy():
  logits = jnp.log(jnp.array([[0.0, 0.1, 0.2, 0.3, 0.4]] * 2000))
  sample = jax.jit(decoding.sample_logits, static_argnums=(2, 3))
  samples = np.asarray(sample(logits, KEY, 1.0, 2))
  assert set(np.unique(samples)) == {3, 4}
  assert abs((samples == 4).mean() - 0.4 / 0.7) < 0.05  # renormalised over the top 2
  np.testing.assert_array_equal(sample(logits, KEY, 1.0, 1), 4)
  np.testing.assert_array_equal(sample(logits, KEY, 0.0, 0), 4)
  assert int(sample(jnp.array([[9.0, 1.0, 0.0]]), KEY, 0.0, 0)[0]) == 1  # the pad id is never chosen
  # Per-row temperatures (a served request each): 0 is greedy for its row only.
  rows = jax.jit(decoding.sample_logits)(logits, KEY, jnp.tile(jnp.array([0.0, 1.0]), 1000))
  assert (rows[::2] == 4).all() and len(set(np.asarray(rows[1::2]).tolist())) == 4


def test_attention_window_limits_context():
  model = DecoderLM(vocab_size=20, attention_window=3, **dict(SMALL, num_layers=1))
  params = init(model, TOKENS)
  apply = applier(model)
  a, b = apply(params, TOKENS[1:]), apply(params, TOKENS[1:].at[0, 0].set(12))
  np.testing.assert_allclose(a[0, 3:], b[0, 3:], atol=1e-6)  # one layer, window 3: position 3 sees 1..3
  assert np.abs(a[0, 2] - b[0, 2]).max() > 1e-4
  np.testing.assert_array_equal(generate(model, params, TOKENS[1:, :4], 15, 1.0),
                                generate(model, params, TOKENS[1:, :4], 15, 1.0, use_cache=False))


def test_remat_same_loss_and_gradients():
  def loss_and_grads(remat):
    model = DecoderLM(vocab_size=20, remat=remat, **dict(SMALL, dropout=0.1, num_layers=1))
    params = init(model, TOKENS)
    loss = lambda p: model.apply({'params': p}, TOKENS, train=True, rngs={'dropout': KEY}).mean()
    return jax.jit(jax.value_and_grad(loss))(params)
  (l1, g1), (l2, g2) = loss_and_grads(False), loss_and_grads(True)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  model = DecoderLM(vocab_size=20, dtype='bfloat16', **SMALL)
  _, params = lm()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init(model, TOKENS)))
  out = applier(model)(params, TOKENS)
  ref = applier(lm()[0])(params, TOKENS)
  assert out.dtype == jnp.float32
  assert 0 < float(jnp.abs(out - ref).max()) < 0.1  # bf16 rounding of the same function
  # The projections really compute in bf16.
  assert 'bf16' in str(jax.make_jaxpr(lambda p: model.apply({'params': p}, TOKENS))(params))
