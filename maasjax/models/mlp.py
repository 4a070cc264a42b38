"""Multi-layer perceptron classifier over flattened inputs."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  num_classes: int
  hidden: Sequence[int] = (256, 256)
  dropout: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxN, train: bool = False):
    h_BxH = jnp.reshape(x_BxN, (x_BxN.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      h_BxH = nn.relu(nn.Dense(width, dtype=self.dtype)(h_BxH))
      h_BxH = nn.Dropout(self.dropout, deterministic=not train)(h_BxH)
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype)(h_BxH)
    return logits_BxC.astype(jnp.float32)
