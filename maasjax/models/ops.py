"""Train-time formulations whose gradients XLA:CPU computes fast (values equal to the plain ones).

jax's transpose rule differentiates a Dense over [batch, length, features] into dot_generals that contract
over two or three axes (dW = X^T dY over batch and length). XLA:CPU canonicalises those with a transposing
copy of dY into which it fuses dY's whole producer (a GELU's or ReLU's backward, the pooling's upsampling):
an elementwise chain evaluated in transposed, unvectorised order, 4-22 ms per MLP layer of the small LM
where the chain alone takes ~1 ms. `training_dot_general` gives the product a backward of two 2-D matmuls
over flattened rows (dX = dY W^T, dW = X^T dY), which XLA:CPU runs without that copy: the MNIST CNN's step
+20%, the 4-layer LM's +16% (interleaved A/B in one process, 2-core Xeon; an optimization barrier on dY
instead, keeping jax's own backward, gained nothing, and with the 2-D form it adds nothing either).

XLA:CPU reduces over the leading (row) dimensions of an activation slowly: its tree-reduction rewrite turns
`dy.sum(axis=rows)` into an unfused reduce-window + reduce, ~7x slower than the same sum as a matrix-vector
product (`ones @ dy`; 4.8 ms against 0.7 ms for a [128,28,28,32] conv output, 2.4 against 0.3 for a
[2048,1024] MLP activation, on a 2-core Xeon). `add_bias` computes a bias's gradient so (the CNN's second
convolution: +2-5%). `TrainDense` does better for a Dense: its bias gradient comes out of the kernel
gradient's own product (LM +7-10%). A separate `add_bias` on the LM's Dense layers, or a custom
LayerNorm backward, measured no gain: XLA then fused the backward differently.
Forward values are exactly the plain ones.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype


_LAX_DOT_GENERAL = jax.lax.dot_general


def training_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """jax.lax.dot_general with a backward of two 2-D matmuls (see above); a flax Dense's or DenseGeneral's
  `dot_general` in training. Values and gradients are lax.dot_general's."""
  if jax.lax.dot_general is not _LAX_DOT_GENERAL:
    # Intercepted (qwix's quantization-aware training patches it): the interceptor's op, untouched.
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  dimension_numbers = ((tuple(lhs_contract), tuple(rhs_contract)), (tuple(lhs_batch), tuple(rhs_batch)))
  return _dot_2d_backward(dimension_numbers, precision, preferred_element_type, lhs, rhs)


def _dot(dimension_numbers, precision, preferred_element_type):
  return lambda lhs, rhs: _LAX_DOT_GENERAL(lhs, rhs, dimension_numbers, precision=precision,
                                           preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _dot_2d_backward(dimension_numbers, precision, preferred_element_type, lhs, rhs):
  return _dot(dimension_numbers, precision, preferred_element_type)(lhs, rhs)


def _dot_2d_backward_fwd(dimension_numbers, precision, preferred_element_type, lhs, rhs):
  return _dot(dimension_numbers, precision, preferred_element_type)(lhs, rhs), (lhs, rhs)


def _dot_2d_backward_bwd(dimension_numbers, precision, preferred_element_type, residuals, dy):
  lhs, rhs = residuals
  (lhs_contract, rhs_contract), batch = dimension_numbers
  k = len(lhs_contract)
  if batch == ((), ()) and lhs_contract == tuple(range(lhs.ndim - k, lhs.ndim)) and rhs_contract == tuple(range(k)):
    # A Dense's or DenseGeneral's product (lhs's trailing axes against rhs's leading ones): dX = dY W^T and
    # dW = X^T dY over the flattened rows.
    lhs_NxK = jnp.reshape(lhs, (-1, math.prod(rhs.shape[:k])))
    rhs_KxF = jnp.reshape(rhs, (lhs_NxK.shape[1], -1))
    dy_NxF = jnp.reshape(dy, (lhs_NxK.shape[0], rhs_KxF.shape[1])).astype(lhs.dtype)
    dot = lambda a, b: jnp.matmul(a, b, precision=precision)
    return (jnp.reshape(dot(dy_NxF, rhs_KxF.T), lhs.shape).astype(lhs.dtype),
            jnp.reshape(dot(lhs_NxK.T, dy_NxF), rhs.shape).astype(rhs.dtype))
  _, vjp = jax.vjp(_dot(dimension_numbers, precision, preferred_element_type), lhs, rhs)  # any other form
  return vjp(dy)


_dot_2d_backward.defvjp(_dot_2d_backward_fwd, _dot_2d_backward_bwd)


def column_sum(x, trailing: int = 1):
  """x summed over all but its last `trailing` axes, as a matrix-vector product (XLA:CPU's fast path)."""
  kept = x.shape[x.ndim - trailing:]
  x_NxC = jnp.reshape(x, (-1, math.prod(kept)))
  return jnp.reshape(jnp.ones((x_NxC.shape[0],), x.dtype) @ x_NxC, kept)


def add_bias(y, bias):
  """y + bias broadcast over y's leading axes (bias's shape is y's trailing shape, its dtype y's); the
  bias's gradient is a `column_sum`."""
  return _add_bias(bias.ndim, y, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _add_bias(trailing, y, bias):
  return y + jnp.reshape(bias, (1,) * (y.ndim - trailing) + bias.shape)


def _add_bias_fwd(trailing, y, bias):
  return _add_bias(trailing, y, bias), None


def _add_bias_bwd(trailing, _, dy):
  return dy, column_sum(dy, trailing)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def dense_with_bias(x, kernel_KxF, bias_F):
  """x @ kernel + bias, its backward two 2-D matmuls with the bias's gradient inside the kernel's: dW and db
  come out of one product, [X, 1]^T dY, instead of a separate sum over the rows (XLA:CPU's slow
  reduce-window). The LM's step +7-10% over training_dot_general with flax's bias add (two interleaved A/B)."""
  return x @ kernel_KxF + jnp.reshape(bias_F, (1,) * (x.ndim - 1) + bias_F.shape)


def _dense_with_bias_fwd(x, kernel_KxF, bias_F):
  return dense_with_bias(x, kernel_KxF, bias_F), (x, kernel_KxF)


def _dense_with_bias_bwd(residuals, dy):
  x, kernel_KxF = residuals
  x_NxK = jnp.reshape(x, (-1, kernel_KxF.shape[0]))
  dy_NxF = jnp.reshape(dy, (x_NxK.shape[0], kernel_KxF.shape[1])).astype(x.dtype)
  dx = jnp.reshape(dy_NxF @ kernel_KxF.T, x.shape)
  with_ones_NxK1 = jnp.concatenate([x_NxK, jnp.ones((x_NxK.shape[0], 1), x.dtype)], axis=1)
  d_kernel_and_bias = with_ones_NxK1.T @ dy_NxF
  return dx, d_kernel_and_bias[:-1], d_kernel_and_bias[-1]


dense_with_bias.defvjp(_dense_with_bias_fwd, _dense_with_bias_bwd)


class TrainDense(nn.Dense):
  """nn.Dense (same parameters, names, init and values) computed by `dense_with_bias` in training.
  Models use it where `train` is true; inference and exports use nn.Dense itself."""

  @nn.compact
  def __call__(self, inputs):
    custom = self.precision is not None or self.dot_general is not None or self.dot_general_cls is not None
    if custom or not self.use_bias or jax.lax.dot_general is not _LAX_DOT_GENERAL:
      # Settings dense_with_bias does not carry (a precision, a custom product), no bias, or qwix
      # intercepting the product (quantization-aware training): flax's own Dense.
      return nn.Dense.__call__(self, inputs)
    kernel = self.param('kernel', self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    return dense_with_bias(inputs, kernel, bias)
