"""DP-SGD's gradient (Abadi et al. 2016), written once for the jitted, sharded step: per-example
gradients clipped to an L2 norm, summed over the real rows, Gaussian noise of std clip * sigma added once,
divided by the expected batch size (q N). The same math as optax.contrib.differentially_private_aggregate,
with a padding mask for Poisson batches and the noise key passed in (derived from seed and step)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_example_norms(grads_B):
  """L2 norm of each example's whole gradient (all leaves together) [B]."""
  squares = [jnp.sum(jnp.reshape(g, (g.shape[0], -1)).astype(jnp.float32) ** 2, axis=1)
             for g in jax.tree.leaves(grads_B)]
  return jnp.sqrt(sum(squares))


def clip_per_example(grads_B, l2_norm_clip: float):
  """Each example's gradient scaled to norm <= clip (unchanged when already inside); returns (clipped, norms)."""
  norms_B = per_example_norms(grads_B)
  scale_B = jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norms_B, 1e-12))
  clipped = jax.tree.map(lambda g: g * jnp.reshape(scale_B, (-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads_B)
  return clipped, norms_B


def private_gradient(grads_B, mask_B, key, l2_norm_clip: float, noise_multiplier: float,
                     expected_batch_size: float):
  """(sum over real rows of clipped per-example gradients + N(0, (clip * sigma)^2)) / expected batch size."""
  clipped, norms_B = clip_per_example(grads_B, l2_norm_clip)
  leaves, treedef = jax.tree.flatten(clipped)
  keys = jax.random.split(key, len(leaves))
  std = l2_norm_clip * noise_multiplier
  noisy = [(jnp.tensordot(mask_B.astype(g.dtype), g, axes=1)
            + std * jax.random.normal(k, g.shape[1:], g.dtype)) / expected_batch_size
           for g, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noisy), norms_B
