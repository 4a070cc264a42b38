"""The classic MNIST CNN: conv 32 -> avgpool -> conv 64 -> avgpool -> dense 256 -> dense classes."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from maasjax.models.ops import TrainDense, add_bias, training_dot_general

# XLA:CPU's YNNPACK fusions leave this small CNN's step half-serial (1.3 of 2 cores busy): without them the
# train step ran 1.38x faster. Set per model class (maasjax.train.steps): the ResNet and the decoder LM
# measured faster without them too; other models keep XLA's defaults until measured.
CPU_COMPILER_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def shifted_slice_conv(x_BxHxWxC, kernel_KxKxCxF, bias_F=None, dot_general=None):
  """A stride-1 'SAME' convolution as kh*kw shifted slices concatenated on channels + one matmul.

  Equal to lax.conv_general_dilated for odd kernels; for a few input channels (MNIST's 1) XLA:CPU's
  convolution and its kernel gradient are slow, while this backward is two plain matmuls. A bias rides in
  the same matmul (a ones column against the bias row), so its gradient comes out of the kernel's product
  instead of a separate reduction over the batch (which XLA:CPU runs slowly; see ops.py). `dot_general`:
  the matmul (ops.training_dot_general in training).
  """
  kh, kw, c, f = kernel_KxKxCxF.shape
  _, h, w, _ = x_BxHxWxC.shape
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  columns = [padded[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]  # (i, j, c): HWIO's order
  weights_PxF = jnp.reshape(kernel_KxKxCxF, (kh * kw * c, f))
  if bias_F is not None:
    columns.append(jnp.ones_like(columns[0][..., :1]))
    weights_PxF = jnp.concatenate([weights_PxF, jnp.reshape(bias_F, (1, f))], axis=0)
  dot_general = dot_general or jax.lax.dot_general
  return dot_general(jnp.concatenate(columns, axis=-1), weights_PxF, (((3,), (0,)), ((), ())))


def avg_pool_2x2(x_BxHxWxC):
  """2x2 average pooling, stride 2, 'VALID' (an odd last row/column is dropped) as reshape + mean:
  a plain reduction, cheaper for XLA:CPU than reduce_window and its gradient."""
  b, h, w, c = x_BxHxWxC.shape
  x_BxHxWxC = x_BxHxWxC[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.mean(jnp.reshape(x_BxHxWxC, (b, h // 2, 2, w // 2, 2, c)), axis=(2, 4))


class TrainConv(nn.Conv):
  """nn.Conv's parameters (same names, shapes and init) for a stride-1 'SAME' conv in training, computed
  the way XLA:CPU differentiates fast: a 1-channel input as `shifted_slice_conv` (bias inside its matmul,
  `ops.training_dot_general`), others with the bias added by `ops.add_bias` (its gradient a matrix-vector
  product). In the MNIST CNN's step, interleaved A/B: the bias forms +2-5%, the training matmul +20%.
  Checkpoints and sharding rules see an ordinary Conv; inference (and so every export) uses nn.Conv itself."""

  @nn.compact
  def __call__(self, x_BxHxWxC):
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x_BxHxWxC.shape[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x_BxHxWxC, kernel, bias = promote_dtype(x_BxHxWxC, kernel, bias, dtype=self.dtype)
    if x_BxHxWxC.shape[-1] == 1:
      return shifted_slice_conv(x_BxHxWxC, kernel, bias, dot_general=training_dot_general)
    y_BxHxWxF = jax.lax.conv_general_dilated(x_BxHxWxC, kernel, (1, 1), 'SAME',
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y_BxHxWxF if bias is None else add_bias(y_BxHxWxF, bias)


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
      # In training, TrainConv (same parameters and values, a faster gradient); inference (and so every
      # export) keeps nn.Conv.
      conv = TrainConv if train else nn.Conv
      h = nn.relu(conv(width, kernel_size=(3, 3), dtype=self.dtype, name=f'Conv_{i}')(h))
      h = avg_pool_2x2(h)
    h_BxF = jnp.reshape(h, (h.shape[0], -1))
    dense = TrainDense if train else nn.Dense  # the same parameters; a faster backward in training
    h_BxD = nn.relu(dense(self.dense, dtype=self.dtype, name='Dense_0')(h_BxF))
    h_BxD = nn.Dropout(self.dropout, deterministic=not train)(h_BxD)
    logits_BxC = dense(self.num_classes, dtype=self.dtype, name='Dense_1')(h_BxD)
    return logits_BxC.astype(jnp.float32)
