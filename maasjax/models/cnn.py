"""The classic MNIST CNN: conv 32 -> avgpool -> conv 64 -> avgpool -> dense 256 -> dense classes."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN(nn.Module):
  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 256
  dropout: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    h = x_BxHxWxC.astype(self.dtype)
    for width in self.features:
      h = nn.relu(nn.Conv(width, kernel_size=(3, 3), dtype=self.dtype)(h))
      h = nn.avg_pool(h, window_shape=(2, 2), strides=(2, 2))
    h_BxF = jnp.reshape(h, (h.shape[0], -1))
    h_BxD = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(h_BxF))
    h_BxD = nn.Dropout(self.dropout, deterministic=not train)(h_BxD)
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype)(h_BxD)
    return logits_BxC.astype(jnp.float32)
