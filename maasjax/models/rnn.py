"""Recurrent sequence classifiers: stacked LSTM or GRU (flax cells under `nn.RNN`) + a linear head, over
float features [B, T, ...] (an 8x8 digit is 8 steps of 8) or tokens [B, T] (id 0 is padding)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

CELLS = {'lstm': nn.OptimizedLSTMCell, 'gru': nn.GRUCell}


class RNNClassifier(nn.Module):
  num_classes: int
  cell: str = 'lstm'  # 'lstm' | 'gru'
  hidden: Sequence[int] = (128,)
  bidirectional: bool = False
  vocab_size: int = 0  # token inputs only
  embed_dim: int = 64  # token inputs only
  dropout: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x, train: bool = False):
    if jnp.issubdtype(x.dtype, jnp.integer):
      lengths_B = jnp.sum((x != 0).astype(jnp.int32), axis=1)
      h_BxTxD = nn.Embed(self.vocab_size, self.embed_dim, name='embed')(x).astype(self.dtype)
    else:
      h_BxTxD = jnp.reshape(x, x.shape[:2] + (-1,)).astype(self.dtype)
      lengths_B = jnp.full((x.shape[0],), x.shape[1], jnp.int32)
    cell_cls = CELLS[self.cell]
    for i, width in enumerate(self.hidden):
      # The cells own the parameters (nn.RNN only scans them): name them for readable param paths.
      make = lambda name: nn.RNN(cell_cls(width, dtype=self.dtype, name=name), return_carry=True)
      if self.bidirectional:
        rnn = nn.Bidirectional(make(f'{self.cell}_{i}_forward'), make(f'{self.cell}_{i}_backward'), return_carry=True)
      else:
        rnn = make(f'{self.cell}_{i}')
      carry, h_BxTxD = rnn(h_BxTxD, seq_lengths=lengths_B)
      h_BxTxD = nn.Dropout(self.dropout, deterministic=not train)(h_BxTxD)
    # The final state after each row's last real step (LSTM carries (c, h): take h).
    states = carry if self.bidirectional else (carry,)
    final_BxD = jnp.concatenate([s[1] if isinstance(s, tuple) else s for s in states], axis=-1)
    final_BxD = nn.Dropout(self.dropout, deterministic=not train)(final_BxD)
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head')(final_BxD).astype(jnp.float32)


class LSTMClassifier(RNNClassifier):
  cell: str = 'lstm'


class GRUClassifier(RNNClassifier):
  cell: str = 'gru'
