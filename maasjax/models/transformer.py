"""Transformers: encoder classifier, decoder-only LM, encoder-decoder seq2seq; pre-LN blocks, masks from
token validity (id 0 is padding), rotary or learned positions, bf16 compute via `dtype`, `remat`, and a
KV cache with `decode=True` (collection 'cache'; see maasjax.models.decoding)."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from maasjax.models.cnn import CPU_COMPILER_OPTIONS
from maasjax.models.ops import TrainDense, training_dot_general
from maasjax.spec import PAD_ID

POSITIONS = ('rotary', 'learned')
NEG_INF = -1e9  # finite: a fully masked row (a padding query) gives a uniform softmax, not NaN


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  emb_dim: int
  num_heads: int
  mlp_dim: int
  dropout: float
  attention_dropout: float
  positions: str
  max_len: int
  dtype: str
  window: int = 0


def rotate(x_BxLxHxD, positions_BxL, base: float = 10000.0, materialize_angles: bool = False):
  """Rotary position embedding (Su et al. 2021): pairs of channels rotated by position-dependent angles.

  `materialize_angles` (training): the sines and cosines are computed once, as small [B, L, K] arrays,
  behind an optimization barrier. Otherwise XLA:CPU fuses them into the rotation and its backward,
  evaluating sin and cos for every head and element (the LM's step +7.6%, interleaved A/B)."""
  half = x_BxLxHxD.shape[-1] // 2
  freqs_K = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxLxK = positions_BxL.astype(jnp.float32)[:, :, None] * freqs_K[None, None, :]
  sin_BxLxK, cos_BxLxK = jnp.sin(angles_BxLxK), jnp.cos(angles_BxLxK)
  if materialize_angles:
    sin_BxLxK, cos_BxLxK = jax.lax.optimization_barrier((sin_BxLxK, cos_BxLxK))
  sin_BxLx1xK = sin_BxLxK[:, :, None, :]
  cos_BxLx1xK = cos_BxLxK[:, :, None, :]
  x1, x2 = x_BxLxHxD[..., :half].astype(jnp.float32), x_BxLxHxD[..., half:2 * half].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos_BxLx1xK - x2 * sin_BxLx1xK, x2 * cos_BxLx1xK + x1 * sin_BxLx1xK,
                         x_BxLxHxD[..., 2 * half:].astype(jnp.float32)], axis=-1)
  return out.astype(x_BxLxHxD.dtype)


def attention_with_dropout(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxLxS, dropout):
  """Softmax attention with `dropout` (a flax Dropout) applied to the weights; masked keys get NEG_INF."""
  logits_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK).astype(jnp.float32) / jnp.sqrt(
      jnp.float32(q_BxLxHxK.shape[-1]))
  logits_BxHxLxS = jnp.where(mask_BxLxS[:, None], logits_BxHxLxS, NEG_INF)
  probs_BxHxLxS = dropout(jax.nn.softmax(logits_BxHxLxS, axis=-1))
  return jnp.einsum('bhls,bshk->blhk', probs_BxHxLxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


class Attention(nn.Module):
  """Multi-head dot-product attention with projections `query`, `key`, `value`, `out`.

  Self-attention (kv_BxSxD is None) may be causal and cached; cross-attention attends to `kv`.
  """
  cfg: BlockConfig
  causal: bool = False
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, valid_BxL, kv_BxSxD=None, kv_valid_BxS=None):
    cfg = self.cfg
    head_dim = cfg.emb_dim // cfg.num_heads
    dot = training_dot_general if not self.deterministic else None
    dense = lambda name: nn.DenseGeneral((cfg.num_heads, head_dim), dtype=cfg.dtype, dot_general=dot, name=name)
    cross = kv_BxSxD is not None
    source = kv_BxSxD if cross else x_BxLxD
    q_BxLxHxK = dense('query')(x_BxLxD)
    k_BxSxHxK = dense('key')(source)
    v_BxSxHxK = dense('value')(source)
    if cfg.positions == 'rotary' and not cross:
      q_BxLxHxK = rotate(q_BxLxHxK, positions_BxL, materialize_angles=not self.deterministic)
      k_BxSxHxK = rotate(k_BxSxHxK, positions_BxL, materialize_angles=not self.deterministic)
    length = x_BxLxD.shape[1]
    slot_q_L = jnp.arange(length)
    if cross:
      key_valid_BxS, slot_k_S = kv_valid_BxS, jnp.arange(kv_BxSxD.shape[1])
    elif self.decode:
      # The cache holds every slot written so far; this call's tokens go to slots [index, index+L).
      batch, _, heads, dim = k_BxSxHxK.shape
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, (batch, cfg.max_len, heads, dim), k_BxSxHxK.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, (batch, cfg.max_len, heads, dim), v_BxSxHxK.dtype)
      cached_valid = self.variable('cache', 'cached_valid', jnp.zeros, (batch, cfg.max_len), jnp.bool_)
      index = self.variable('cache', 'cache_index', jnp.zeros, (), jnp.int32)
      i = index.value
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxSxHxK, (0, i, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxSxHxK, (0, i, 0, 0))
      cached_valid.value = jax.lax.dynamic_update_slice(cached_valid.value, valid_BxL, (0, i))
      index.value = i + length
      k_BxSxHxK, v_BxSxHxK, key_valid_BxS = cached_k.value, cached_v.value, cached_valid.value
      slot_q_L, slot_k_S = i + slot_q_L, jnp.arange(cfg.max_len)
    else:
      key_valid_BxS, slot_k_S = valid_BxL, slot_q_L
    mask_BxLxS = jnp.broadcast_to(key_valid_BxS[:, None, :], (x_BxLxD.shape[0], length, key_valid_BxS.shape[1]))
    if self.causal and not cross:
      mask_BxLxS = mask_BxLxS & (slot_k_S[None, :] <= slot_q_L[:, None])[None]
      if cfg.window:  # sliding window: with rotary positions, generation past the trained length stays in range
        mask_BxLxS = mask_BxLxS & (slot_k_S[None, :] > slot_q_L[:, None] - cfg.window)[None]
    if (self.deterministic or not cfg.attention_dropout) and jnp.dtype(cfg.dtype) == jnp.float32:
      # One fusible op (faster on XLA:CPU). Not for bf16: its XLA form accumulates the scores in float32, so the
      # backward multiplies float32 score gradients (a multi-pass matmul on a TPU); the explicit path below
      # multiplies bf16 throughout, with the softmax in float32.
      out_BxLxHxK = jax.nn.dot_product_attention(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_BxLxS[:, None])
    else:  # bf16, or dropout on the attention weights: spelled out
      out_BxLxHxK = attention_with_dropout(q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxLxS, nn.Dropout(
          cfg.attention_dropout, deterministic=self.deterministic or not cfg.attention_dropout))
    return nn.DenseGeneral(cfg.emb_dim, axis=(-2, -1), dtype=cfg.dtype, dot_general=dot, name='out')(out_BxLxHxK)


class MLP(nn.Module):
  cfg: BlockConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxLxD):
    dense = nn.Dense if self.deterministic else TrainDense  # the same parameters; a faster backward in training
    h_BxLxF = nn.gelu(dense(self.cfg.mlp_dim, dtype=self.cfg.dtype, name='wi')(x_BxLxD))
    h_BxLxF = nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)(h_BxLxF)
    return dense(self.cfg.emb_dim, dtype=self.cfg.dtype, name='wo')(h_BxLxF)


class Block(nn.Module):
  """Pre-LN residual block: self-attention, optional cross-attention, MLP."""
  cfg: BlockConfig
  causal: bool = False
  cross: bool = False

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, valid_BxL, encoded_BxSxD, encoded_valid_BxS, deterministic: bool,
               decode: bool):
    cfg = self.cfg
    norm = lambda name: nn.LayerNorm(dtype=cfg.dtype, name=name)
    drop = lambda h: nn.Dropout(cfg.dropout, deterministic=deterministic)(h)
    h = Attention(cfg, causal=self.causal, deterministic=deterministic, decode=decode, name='attention')(
        norm('pre_attention_norm')(x_BxLxD), positions_BxL, valid_BxL)
    x_BxLxD = x_BxLxD + drop(h)
    if self.cross:
      h = Attention(cfg, deterministic=deterministic, name='cross_attention')(
          norm('pre_cross_attention_norm')(x_BxLxD), positions_BxL, valid_BxL, encoded_BxSxD, encoded_valid_BxS)
      x_BxLxD = x_BxLxD + drop(h)
    h = MLP(cfg, deterministic=deterministic, name='mlp')(norm('pre_mlp_norm')(x_BxLxD))
    return x_BxLxD + drop(h)


# Argument positions (counting the module as 0) of Block's Python-valued flags, static under remat.
_BLOCK_STATIC_ARGNUMS = (6, 7)


class Stack(nn.Module):
  """Embedding (tokens, or a projection of float features) + positions + blocks + final norm."""
  cfg: BlockConfig
  num_layers: int
  vocab_size: int = 0  # 0: inputs are float features, projected to emb_dim
  causal: bool = False
  cross: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x, positions_BxL, valid_BxL, encoded_BxSxD=None, encoded_valid_BxS=None, train: bool = False,
               decode: bool = False):
    cfg = self.cfg
    if self.vocab_size:
      h_BxLxD = nn.Embed(self.vocab_size, cfg.emb_dim, name='embed')(x).astype(cfg.dtype)
    else:
      h_BxLxD = (TrainDense if train else nn.Dense)(cfg.emb_dim, dtype=cfg.dtype, name='input_projection')(
          x.astype(cfg.dtype))
    if cfg.positions == 'learned':
      table_PxD = self.param('pos_embed', nn.initializers.normal(0.02), (cfg.max_len, cfg.emb_dim))
      h_BxLxD = h_BxLxD + table_PxD[jnp.clip(positions_BxL, 0, cfg.max_len - 1)].astype(cfg.dtype)
    h_BxLxD = nn.Dropout(cfg.dropout, deterministic=not train)(h_BxLxD)
    block_cls = nn.remat(Block, static_argnums=_BLOCK_STATIC_ARGNUMS) if self.remat else Block
    for i in range(self.num_layers):
      h_BxLxD = block_cls(cfg, causal=self.causal, cross=self.cross, name=f'layers_{i}')(
          h_BxLxD, positions_BxL, valid_BxL, encoded_BxSxD, encoded_valid_BxS, not train, decode)
    return nn.LayerNorm(dtype=cfg.dtype, name='final_norm')(h_BxLxD)


def default_positions(valid_BxL):
  """0, 1, 2, ... over each row's valid tokens (left padding shifts them), -1 at padding."""
  return jnp.cumsum(valid_BxL.astype(jnp.int32), axis=1) - 1


class TransformerBase(nn.Module):
  """The settings every Transformer model shares (the `config.model` keys)."""
  vocab_size: int = 0
  num_layers: int = 2
  num_heads: int = 4
  emb_dim: int = 128
  mlp_dim: int = 512
  dropout: float = 0.1
  attention_dropout: float = 0.0
  positions: str = 'rotary'  # 'rotary' | 'learned'
  max_len: int = 256  # learned position table size, and the KV cache length when decoding
  attention_window: int = 0  # > 0: causal attention sees at most this many tokens (itself included)
  remat: bool = False
  dtype: str = 'float32'

  def block_config(self) -> BlockConfig:
    # Settings are validated where the config is read (maasjax.models.check_settings), before tracing.
    return BlockConfig(self.emb_dim, self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                       self.positions, self.max_len, self.dtype, self.attention_window)

  def stack(self, vocab_size: int, causal: bool = False, cross: bool = False, name: str | None = None) -> Stack:
    return Stack(self.block_config(), self.num_layers, vocab_size, causal=causal, cross=cross, remat=self.remat,
                 name=name)


class EncoderClassifier(TransformerBase):
  """Bidirectional encoder + masked mean pooling + linear head, over tokens [B, L] or features [B, L, ...]."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    if jnp.issubdtype(x.dtype, jnp.integer):
      valid_BxL, vocab = x != PAD_ID, self.vocab_size
    else:  # float features: one token per row of the input, e.g. an 8x8 image as 8 rows of 8
      x = jnp.reshape(x, x.shape[:2] + (-1,))
      valid_BxL, vocab = jnp.ones(x.shape[:2], jnp.bool_), 0
    h_BxLxD = self.stack(vocab, name='encoder')(x, default_positions(valid_BxL), valid_BxL, train=train)
    w_BxL = valid_BxL.astype(h_BxLxD.dtype)
    pooled_BxD = jnp.sum(h_BxLxD * w_BxL[:, :, None], axis=1) / jnp.maximum(jnp.sum(w_BxL, axis=1), 1.0)[:, None]
    return (TrainDense if train else nn.Dense)(self.num_classes, dtype=self.dtype, name='head')(
        pooled_BxD).astype(jnp.float32)


class DecoderLM(TransformerBase):
  """Causal decoder-only language model: tokens [B, L] -> next-token logits [B, L, V]."""
  # Its train step without XLA:CPU's YNNPACK fusions: 1.05-1.10x faster in two interleaved runs (4 x d256,
  # seq 128, batch 16), now that fp32 attention is one fused op (the explicit form had lost 8% without them).
  cpu_compiler_options = CPU_COMPILER_OPTIONS

  @nn.compact
  def __call__(self, tokens_BxL, positions_BxL=None, train: bool = False, decode: bool = False):
    valid_BxL = tokens_BxL != PAD_ID
    if positions_BxL is None:
      positions_BxL = default_positions(valid_BxL)
    h_BxLxD = self.stack(self.vocab_size, causal=True, name='decoder')(
        tokens_BxL, positions_BxL, valid_BxL, train=train, decode=decode)
    return (TrainDense if train else nn.Dense)(self.vocab_size, dtype=self.dtype, name='logits')(
        h_BxLxD).astype(jnp.float32)


class EncoderDecoder(TransformerBase):
  """Encoder-decoder: inputs [B, S] and shifted targets [B, T] -> logits [B, T, V] (shared vocabulary)."""

  def setup(self):
    self.encoder = self.stack(self.vocab_size)
    self.decoder = self.stack(self.vocab_size, causal=True, cross=True)
    self.logits = nn.Dense(self.vocab_size, dtype=self.dtype)

  def encode(self, inputs_BxS, train: bool = False):
    valid_BxS = inputs_BxS != PAD_ID
    return self.encoder(inputs_BxS, default_positions(valid_BxS), valid_BxS, train=train), valid_BxS

  def decode(self, encoded_BxSxD, encoded_valid_BxS, targets_in_BxT, positions_BxT=None, train: bool = False,
             decode: bool = False):
    valid_BxT = targets_in_BxT != PAD_ID
    if positions_BxT is None:
      positions_BxT = default_positions(valid_BxT)
    h_BxTxD = self.decoder(targets_in_BxT, positions_BxT, valid_BxT, encoded_BxSxD, encoded_valid_BxS, train=train,
                           decode=decode)
    return self.logits(h_BxTxD).astype(jnp.float32)

  def __call__(self, inputs_BxS, targets_in_BxT, train: bool = False):
    encoded_BxSxD, valid_BxS = self.encode(inputs_BxS, train)
    return self.decode(encoded_BxSxD, valid_BxS, targets_in_BxT, train=train)
