"""A small pre-activation-free ResNet (He et al. 2016) with BatchNorm, for CIFAR-sized images.

BatchNorm statistics live in the `batch_stats` collection: updated from the batch when
`train=True`, read from the running averages when `train=False`.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ResidualBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name=None, **kw: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                                dtype=self.dtype, name=name, **kw)
    residual = x
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
    # Zero-init the last BN scale so each block starts as the identity (Goyal et al. 2017).
    y = norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False,
                         dtype=self.dtype, name='proj_conv')(residual)
      residual = norm(name='proj_norm')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 16
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    h = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name='stem_conv')(x_BxHxWxC.astype(self.dtype))
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name='stem_norm')(h))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        h = ResidualBlock(self.width * 2**stage, strides, dtype=self.dtype)(h, train)
    h_BxD = jnp.mean(h, axis=(1, 2))
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(h_BxD)
    return logits_BxC.astype(jnp.float32)
