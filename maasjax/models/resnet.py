"""A small pre-activation-free ResNet (He et al. 2016) with BatchNorm, for CIFAR-sized images.

BatchNorm statistics live in the `batch_stats` collection: updated from the batch when
`train=True`, read from the running averages when `train=False`. `batch_norm=False` is the inference form
with BatchNorm folded into biased convolutions (maasjax compress --method fold).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from maasjax.models.cnn import CPU_COMPILER_OPTIONS

BN_EPSILON = 1e-5  # every BatchNorm's epsilon (folding divides by sqrt(var + BN_EPSILON))


def batch_norm_or_identity(batch_norm: bool, train: bool, dtype: str):
  """A BatchNorm factory, or one that gives the identity when BatchNorm is folded away."""
  def norm(name=None, **kw):
    if not batch_norm:
      return lambda y: y
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, dtype=dtype, name=name,
                        **kw)
  return norm


class ResidualBlock(nn.Module):
  features: int
  strides: int = 1
  dtype: str = 'float32'
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    norm = batch_norm_or_identity(self.batch_norm, train, self.dtype)
    bias = not self.batch_norm  # a folded BatchNorm leaves a bias behind
    residual = x
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=bias, dtype=self.dtype)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=bias, dtype=self.dtype)(y)
    # Zero-init the last BN scale so each block starts as the identity (Goyal et al. 2017).
    y = norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=bias,
                         dtype=self.dtype, name='proj_conv')(residual)
      residual = norm(name='proj_norm')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2)
  width: int = 16
  dtype: str = 'float32'
  batch_norm: bool = True
  # Without XLA:CPU's YNNPACK fusions its train step ran 1.36x faster (246 -> 335 examples/s, CIFAR-sized
  # batch 128, one process, interleaved), as the CNN's did.
  cpu_compiler_options = CPU_COMPILER_OPTIONS

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    norm = batch_norm_or_identity(self.batch_norm, train, self.dtype)
    h = nn.Conv(self.width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype,
                name='stem_conv')(x_BxHxWxC.astype(self.dtype))
    h = nn.relu(norm(name='stem_norm')(h))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        h = ResidualBlock(self.width * 2**stage, strides, dtype=self.dtype, batch_norm=self.batch_norm)(h, train)
    h_BxD = jnp.mean(h, axis=(1, 2))
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(h_BxD)
    return logits_BxC.astype(jnp.float32)
