"""The classic MNIST CNN: conv 32 -> avgpool -> conv 64 -> avgpool -> dense 256 -> dense classes."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

# XLA:CPU's YNNPACK fusions leave this small CNN's step half-serial (1.3 of 2 cores busy): without them the
# train step ran 1.38x faster. Set per model class (maasjax.train.steps): the ResNet and the decoder LM
# measured faster without them too; other models keep XLA's defaults until measured.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def shifted_slice_conv(x_BxHxWxC, kernel_KxKxCxF, bias_F=None):
  """A stride-1 'SAME' convolution as kh*kw shifted slices concatenated on channels + one matmul.

  Equal to lax.conv_general_dilated for odd kernels; for a few input channels (MNIST's 1) XLA:CPU's
  convolution and its kernel gradient are slow, while this backward is two plain matmuls.
  """
  kh, kw, c, f = kernel_KxKxCxF.shape
  _, h, w, _ = x_BxHxWxC.shape
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  patches_BxHxWxP = jnp.concatenate([padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
  y_BxHxWxF = patches_BxHxWxP @ jnp.reshape(kernel_KxKxCxF, (kh * kw * c, f))  # (i, j, c): HWIO's order
  return y_BxHxWxF if bias_F is None else y_BxHxWxF + jnp.reshape(bias_F, (1, 1, 1, f))


def avg_pool_2x2(x_BxHxWxC):
  """2x2 average pooling, stride 2, 'VALID' (an odd last row/column is dropped) as reshape + mean:
  a plain reduction, cheaper for XLA:CPU than reduce_window and its gradient."""
  b, h, w, c = x_BxHxWxC.shape
  x_BxHxWxC = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.mean(jnp.reshape(x_BxHxWxC, (b, h // 2, 2, w // 2, 2, c)), axis=(2, 4))


class SliceConv(nn.Conv):
  """nn.Conv's parameters (same names, shapes and init) for a stride-1 'SAME' conv, computed by
  `shifted_slice_conv`: checkpoints and sharding rules see an ordinary Conv."""

  @nn.compact
  def __call__(self, x_BxHxWxC):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x_BxHxWxC.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x_BxHxWxC, kernel, bias = promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    return shifted_slice_conv(x_BxHxWxC, kernel, bias)


class CNN(nn.Module):
  cpu_compiler_options = CPU_COMPILER_OPTIONS  # the train step's XLA options on CPU (maasjax.train.steps)
  num_classes: int
  features: Sequence[int] = (32, 64)
  dense: int = 256
  dropout: float = 0.0
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False):
    h = x_BxHxWxC.astype(self.dtype)
    for i, width in enumerate(self.features):
      # In training, a 1-channel input convolves as slices + matmul (same parameters and values, a faster
      # gradient); inference (and so every export) keeps the plain convolution.
      conv = SliceConv if train and h.shape[-1] == 1 else nn.Conv
      h = nn.relu(conv(width, kernel_size=(3, 3), dtype=self.dtype, name=f'Conv_{i}')(h))
      h = avg_pool_2x2(h)
    h_BxF = jnp.reshape(h, (h.shape[0], -1))
    h_BxD = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(h_BxF))
    h_BxD = nn.Dropout(self.dropout, deterministic=not train)(h_BxD)
    logits_BxC = nn.Dense(self.num_classes, dtype=self.dtype)(h_BxD)
    return logits_BxC.astype(jnp.float32)
