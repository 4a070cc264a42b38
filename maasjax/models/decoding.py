"""Autoregressive decoding (greedy, temperature, top-k) for the Transformer LM and seq2seq models: prefill
the prompt once, then one KV-cached step per token; the uncached path re-runs the whole sequence (the
reference the cache is tested against). Prompts are left-padded with 0."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from maasjax.models.transformer import DecoderLM, EncoderDecoder, default_positions
from maasjax.spec import PAD_ID

# (tokens_BxL, positions_BxL, cache) -> (logits_BxLxV, cache)
StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def row_keys(rng, batch: int):
  """One PRNG key per row: `rng` if it already holds [B] keys, else fold_in(rng, row index).

  Either way a row's samples do not depend on what else is in the batch.
  """
  if rng.shape:
    return rng
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(batch))


def sample_logits(logits_BxV, rng, temperature=0.0, top_k=0):
  """Greedy where the temperature is 0, else a sample from softmax(logits / T) over the top k (0: all).

  `temperature` and `top_k` are numbers or one per row [B] (a served model takes them per request).
  """
  logits_BxV = logits_BxV.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf)  # padding is never generated
  greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    return greedy_B
  t_B = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), greedy_B.shape)
  logits_BxV = logits_BxV / jnp.maximum(t_B, 1e-6)[:, None]
  vocab = logits_BxV.shape[-1]
  if isinstance(top_k, int):
    if top_k:
      # A sort, not lax.top_k: TF 2.21 cannot load the StableHLO jax emits for top_k (exported `generate`).
      kth_Bx1 = jnp.sort(logits_BxV, axis=-1)[:, vocab - min(top_k, vocab)][:, None]
      logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  else:  # one k per row; k <= 0 keeps every token
    k_B = jnp.clip(jnp.asarray(top_k, jnp.int32), 0, vocab)
    kth_Bx1 = jnp.take_along_axis(jnp.sort(logits_BxV, axis=-1), jnp.maximum(vocab - k_B, 0)[:, None], axis=1)
    logits_BxV = jnp.where((k_B[:, None] > 0) & (logits_BxV < kth_Bx1), -jnp.inf, logits_BxV)
  sampled_B = jax.vmap(jax.random.categorical)(row_keys(rng, greedy_B.shape[0]), logits_BxV).astype(jnp.int32)
  return jnp.where(t_B > 0, sampled_B, greedy_B)


def _step_keys(keys_B, i):
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, i)


def _stop(tokens_B, done_B, eos_id: int | None):
  tokens_B = jnp.where(done_B, PAD_ID, tokens_B)
  return tokens_B, done_B | (tokens_B == eos_id) if eos_id is not None else done_B


def decode_cached(step_fn: StepFn, cache, prompt_BxP, max_new_tokens: int, rng, temperature: float = 0.0,
                  top_k: int = 0, eos_id: int | None = None):
  """Prefill the prompt once, then one cached step per new token. Returns tokens [B, max_new_tokens]."""
  positions_BxP = default_positions(prompt_BxP != PAD_ID)
  logits_BxPxV, cache = step_fn(prompt_BxP, positions_BxP, cache)
  batch = prompt_BxP.shape[0]
  keys_B = row_keys(rng, batch)

  def body(carry, i):
    logits_BxV, next_pos_B, cache, done_B = carry
    tokens_B, done_B = _stop(sample_logits(logits_BxV, _step_keys(keys_B, i), temperature, top_k), done_B, eos_id)
    logits_Bx1xV, cache = step_fn(tokens_B[:, None], next_pos_B[:, None], cache)
    return (logits_Bx1xV[:, 0], next_pos_B + 1, cache, done_B), tokens_B

  carry = (logits_BxPxV[:, -1], positions_BxP[:, -1] + 1, cache, jnp.zeros((batch,), jnp.bool_))
  # The last token needs no model step after it: scan over all but one, then sample it.
  (logits_BxV, _, _, done_B), tokens_NxB = jax.lax.scan(body, carry, jnp.arange(max_new_tokens - 1))
  last_B, _ = _stop(sample_logits(logits_BxV, _step_keys(keys_B, max_new_tokens - 1), temperature, top_k),
                    done_B, eos_id)
  return jnp.concatenate([tokens_NxB.T, last_B[:, None]], axis=1)


def decode_uncached(logits_fn: Callable[[jax.Array], jax.Array], prompt_BxP, max_new_tokens: int, rng,
                    temperature: float = 0.0, top_k: int = 0, eos_id: int | None = None):
  """The reference: each step runs `logits_fn` (tokens_BxT -> logits_BxTxV) over the whole sequence."""
  batch, p = prompt_BxP.shape
  buffer_BxT = jnp.concatenate([prompt_BxP, jnp.zeros((batch, max_new_tokens), prompt_BxP.dtype)], axis=1)
  keys_B = row_keys(rng, batch)

  def body(i, carry):
    buffer_BxT, done_B = carry
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_fn(buffer_BxT), p - 1 + i, axis=1, keepdims=False)
    tokens_B, done_B = _stop(sample_logits(logits_BxV, _step_keys(keys_B, i), temperature, top_k), done_B, eos_id)
    return jax.lax.dynamic_update_slice(buffer_BxT, tokens_B[:, None].astype(buffer_BxT.dtype), (0, p + i)), done_B

  buffer_BxT, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buffer_BxT, jnp.zeros((batch,), jnp.bool_)))
  return buffer_BxT[:, p:]


def init_cache(model, batch_size: int, method=None, *args):
  """An empty KV cache (every slot invalid, index 0) for `model`'s decoding calls, from shapes alone."""
  tokens = jnp.zeros((batch_size, model.max_len), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, tokens, decode=True, method=method))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])


def check_length(model, prompt_len: int, max_new_tokens: int) -> None:
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens={max_new_tokens}: expected at least 1')
  if prompt_len + max_new_tokens > model.max_len:
    raise ValueError(f'prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model\'s '
                     f'max_len={model.max_len} (its KV cache length)')


def lm_generate(model: DecoderLM, params, prompt_BxP, max_new_tokens: int, rng, temperature: float = 0.0,
                top_k: int = 0, eos_id: int | None = None, use_cache: bool = True):
  """Continuations [B, max_new_tokens] of left-padded prompts [B, P] from a decoder-only LM."""
  check_length(model, prompt_BxP.shape[1], max_new_tokens)
  if not use_cache:
    logits_fn = lambda tokens: model.apply({'params': params}, tokens)
    return decode_uncached(logits_fn, prompt_BxP, max_new_tokens, rng, temperature, top_k, eos_id)

  def step_fn(tokens_BxL, positions_BxL, cache):
    logits, mutated = model.apply({'params': params, 'cache': cache}, tokens_BxL, positions_BxL, decode=True,
                                  mutable=['cache'])
    return logits, mutated['cache']

  cache = init_cache(model, prompt_BxP.shape[0])
  return decode_cached(step_fn, cache, prompt_BxP, max_new_tokens, rng, temperature, top_k, eos_id)


def seq2seq_generate(model: EncoderDecoder, params, inputs_BxS, max_new_tokens: int, rng, bos_id: int,
                     temperature: float = 0.0, top_k: int = 0, eos_id: int | None = None, use_cache: bool = True):
  """Output tokens [B, max_new_tokens] for inputs [B, S]: encode once, decode from BOS."""
  check_length(model, 1, max_new_tokens)
  encoded_BxSxD, valid_BxS = model.apply({'params': params}, inputs_BxS, method=EncoderDecoder.encode)
  start_Bx1 = jnp.full((inputs_BxS.shape[0], 1), bos_id, jnp.int32)
  if not use_cache:
    logits_fn = lambda tokens: model.apply({'params': params}, encoded_BxSxD, valid_BxS, tokens,
                                           method=EncoderDecoder.decode)
    return decode_uncached(logits_fn, start_Bx1, max_new_tokens, rng, temperature, top_k, eos_id)

  def step_fn(tokens_BxL, positions_BxL, cache):
    logits, mutated = model.apply({'params': params, 'cache': cache}, encoded_BxSxD, valid_BxS, tokens_BxL,
                                  positions_BxL, decode=True, method=EncoderDecoder.decode, mutable=['cache'])
    return logits, mutated['cache']

  cache = init_cache(model, inputs_BxS.shape[0], EncoderDecoder.decode, encoded_BxSxD, valid_BxS)
  return decode_cached(step_fn, cache, start_Bx1, max_new_tokens, rng, temperature, top_k, eos_id)


def slot_functions(model: DecoderLM, max_length: int):
  """What a continuous-batching server runs, as pure functions of the inference variables:

  prefill(variables, tokens_1xP, length, temperature, top_k, seed) -> (first token [1], cache of one request):
    the prompt right-padded to a bucket P, `length` real tokens; the cache continues at slot `length`.
  insert(cache_S, cache_1, slot) -> cache_S: one request's cache into slot `slot` of S.
  decode(variables, cache_S, tokens_S, positions_S, steps_S, temperature_S, top_k_S, seed_S) -> (tokens_S, cache_S):
    one token for every slot; `positions_S` is where each input token sits, `steps_S` its index among the
    generated tokens (the sample for generated token i uses fold_in(key(seed), i), as `decode_cached` does, so a
    seeded request draws the same tokens whatever else shares the batch).
  The slot cache holds `max_length` tokens per slot; learned position tables are cut to that length.
  """
  slot_model = model.clone(max_len=max_length)

  def cut(variables):
    if model.positions != 'learned':
      return variables
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v[:max_length] if path[-1].key == 'pos_embed' else v, variables['params'])
    return dict(variables, params=params)

  def step(variables, cache, tokens_BxL, positions_BxL):
    logits, mutated = slot_model.apply({'params': cut(variables)['params'], 'cache': cache}, tokens_BxL,
                                       positions_BxL, decode=True, mutable=['cache'])
    return logits, mutated['cache']

  def key(seed, i):
    return jax.random.fold_in(jax.random.key(seed), i)

  def prefill(variables, tokens_1xP, length, temperature, top_k, seed):
    cache = init_cache(slot_model, 1)
    positions_1xP = jnp.arange(tokens_1xP.shape[1], dtype=jnp.int32)[None]
    logits_1xPxV, cache = step(variables, cache, tokens_1xP, positions_1xP)
    logits_1xV = jax.lax.dynamic_index_in_dim(logits_1xPxV, length - 1, axis=1, keepdims=False)
    token_1 = sample_logits(logits_1xV, key(seed, 0)[None], temperature[None], top_k[None])
    # The padding's cache entries are overwritten as decoding goes on; the next token goes to slot `length`.
    cache = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.asarray(length, v.dtype) if path[-1].key == 'cache_index' else v, cache)
    return token_1, cache

  def insert(cache_S, cache_1, slot):
    return jax.tree.map(lambda big, one: jax.lax.dynamic_update_index_in_dim(big, one, slot, 0), cache_S, cache_1)

  def decode(variables, cache_S, tokens_S, positions_S, steps_S, temperature_S, top_k_S, seed_S):
    def one(cache, token, position):  # each slot has its own cache index: a vmap over single-request steps
      logits_1x1xV, cache = step(variables, cache, token[None, None], position[None, None])
      return logits_1x1xV[0, 0], cache
    logits_SxV, cache_S = jax.vmap(one)(cache_S, tokens_S, positions_S)
    keys_S = jax.vmap(key)(seed_S, steps_S)
    return sample_logits(logits_SxV, keys_S, temperature_S, top_k_S), cache_S

  def empty_cache(slots: int):
    return jax.tree.map(lambda v: jnp.zeros((slots,) + v.shape, v.dtype), init_cache(slot_model, 1))

  return prefill, insert, decode, empty_cache
