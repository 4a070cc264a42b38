"""Sequence tasks: language modelling, seq2seq and token sequence classification.

Token id 0 is padding: padded labels are not scored. Token-level metrics (loss, accuracy) are
averaged over scored tokens; seq2seq exact match over sequences.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from maasjax.data.tokenizers import PAD_ID
from maasjax.train.tasks import Classification, Task, register, run_model

BOS_ID = 1  # the decoder's start token for seq2seq (CharVocab / ByteVocab with BOS)


def token_sums(logits_BxLxV, labels_BxL, batch) -> dict[str, jax.Array]:
  """Cross-entropy and accuracy summed over scored tokens (label != 0, row not padding)."""
  mask_B = batch.get('mask', jnp.ones(labels_BxL.shape[:1], jnp.float32))
  w_BxL = (labels_BxL != PAD_ID).astype(jnp.float32) * mask_B[:, None]
  loss_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, labels_BxL)
  correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == labels_BxL).astype(jnp.float32)
  return {'loss': jnp.sum(loss_BxL * w_BxL), 'accuracy': jnp.sum(correct_BxL * w_BxL), 'count': jnp.sum(w_BxL)}


class LanguageModelling(Task):
  """Next-token cross-entropy; perplexity = exp(loss per token)."""
  name = 'language_modelling'
  metric_names = ('loss', 'accuracy')

  def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
    return {'inputs': jnp.ones((batch_size,) + tuple(self.info.input_shape), jnp.int32)}

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    return run_model(model, variables, (batch['inputs'],), train, rngs, mutable, init)

  def loss_and_sums(self, logits_BxLxV, batch):
    sums = token_sums(logits_BxLxV, batch['labels'], batch)
    return sums['loss'] / jnp.maximum(sums['count'], 1.0), sums

  def finalize(self, sums, examples=None):
    metrics = super().finalize(sums)
    metrics['perplexity'] = math.exp(min(metrics['loss'], 50.0))
    return metrics


def shift_right(labels_BxT, bos_id: int = BOS_ID):
  """Decoder inputs for teacher forcing: BOS, then the targets but the last."""
  return jnp.concatenate([jnp.full(labels_BxT.shape[:1] + (1,), bos_id, labels_BxT.dtype), labels_BxT[:, :-1]], axis=1)


class Seq2Seq(Task):
  """Token cross-entropy under teacher forcing, and sequence exact match.

  Exact match is computed from the teacher-forced argmax: every target token (EOS included) is the
  argmax given the true prefix exactly when greedy decoding reproduces the target, so this is the
  greedy-decoding exact match without running the decoder (tests check the two agree).
  """
  name = 'seq2seq'
  metric_names = ('loss', 'accuracy')

  def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
    length = int(self.info.extra.get('target_length', 1))
    return {'inputs': jnp.ones((batch_size,) + tuple(self.info.input_shape), jnp.int32),
            'labels': jnp.ones((batch_size, length), jnp.int32)}

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    return run_model(model, variables, (batch['inputs'], shift_right(batch['labels'])), train, rngs, mutable, init)

  def loss_and_sums(self, logits_BxTxV, batch):
    labels_BxT = batch['labels']
    sums = token_sums(logits_BxTxV, labels_BxT, batch)
    mask_B = batch.get('mask', jnp.ones(labels_BxT.shape[:1], jnp.float32))
    scored_BxT = labels_BxT != PAD_ID
    right_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == labels_BxT) | ~scored_BxT
    exact_B = jnp.all(right_BxT, axis=1) & jnp.any(scored_BxT, axis=1)
    sums['exact_match'] = jnp.sum(exact_B.astype(jnp.float32) * mask_B)
    sums['sequences'] = jnp.sum(mask_B)
    return sums['loss'] / jnp.maximum(sums['count'], 1.0), sums

  def finalize(self, sums, examples=None):
    metrics = super().finalize(sums)
    metrics['exact_match'] = float(sums['exact_match']) / max(float(sums['sequences']), 1.0)
    return metrics


class SequenceClassification(Classification):
  """Classification of token sequences (padded with 0): tokens go to the model as integers."""
  name = 'sequence_classification'

  def example_inputs(self, batch_size: int = 1):
    return jnp.ones((batch_size,) + tuple(self.info.input_shape), jnp.int32)

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    return run_model(model, variables, (batch['inputs'],), train, rngs, mutable, init)


register('language_modelling', LanguageModelling)
register('seq2seq', Seq2Seq)
register('sequence_classification', SequenceClassification)
