"""Sequence tasks: language modelling, seq2seq and token sequence classification. Token id 0 is padding
and is not scored; loss and accuracy are per scored token, seq2seq exact match per sequence."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maasjax.tokenizers import tokenizer_from_info
from maasjax.spec import BOS_ID, EOS_ID, PAD_ID, SERVING_DEFAULT, Signature, TensorSpec
from maasjax.train.tasks import Classification, Task, run_model
EXPORT_MAX_NEW_TOKENS = 128  # tokens an exported `generate` signature produces per request


def token_spec(info, shape) -> TensorSpec:
  """Token ids as a client sends them: 0 (padding) .. vocabulary size - 1; the server refuses others."""
  vocab = int(info.extra.get('model_fields', {}).get('vocab_size', info.num_classes))
  return TensorSpec(shape, 'int32', low=0, high=vocab - 1)


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

  def export_signatures(self, model):
    """`serving_default`: tokens -> next-token logits. `generate`: left-padded prompts -> sampled tokens.

    `generate` takes prompts of the training length (left-padded with 0) and, per row, a temperature
    (0: greedy) and a seed; it returns up to EXPORT_MAX_NEW_TOKENS tokens (0 after an EOS), KV-cached.
    """
    from maasjax.models import decoding
    prompt_len = int(self.info.input_shape[0])
    eos_id = tokenizer_from_info(self.info).eos_id  # None for a plain character vocabulary
    score = lambda variables, x: {'logits': self.forward(model, variables, {'inputs': x['tokens']}, train=False)}
    sigs = {SERVING_DEFAULT: Signature({'tokens': token_spec(self.info, (None, None))}, score,
                                       lambda batch: {'tokens': np.asarray(batch['inputs'])},
                                       polymorphic={'tokens': 'b, t'}, tolerance=1e-4)}
    new_tokens = min(EXPORT_MAX_NEW_TOKENS, model.max_len - prompt_len)
    if new_tokens < 1:
      return sigs  # no room in the KV cache after a full-length prompt

    def generate(variables, x):
      keys_B = jax.vmap(jax.random.key)(x['seed'])
      return {'tokens': decoding.lm_generate(model, variables['params'], x['tokens'], new_tokens, keys_B,
                                             temperature=x['temperature'], eos_id=eos_id)}

    def example(batch):
      tokens = np.asarray(batch['inputs'])[:, :prompt_len]
      left = np.zeros_like(tokens)
      for i, row in enumerate(tokens):  # move any padding to the left, as a client would send it
        real = row[row != 0]
        left[i, prompt_len - len(real):] = real
      rows = np.arange(len(tokens))
      return {'tokens': left, 'temperature': np.where(rows % 2, 0.8, 0.0).astype(np.float32),
              'seed': rows.astype(np.int32)}

    sigs['generate'] = Signature({'tokens': token_spec(self.info, (None, prompt_len)),
                                  'temperature': TensorSpec((None,), 'float32', finite=True, low=0.0),
                                  'seed': TensorSpec((None,), 'int32')}, generate, example)
    return sigs


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

  def export_signatures(self, model):
    """`serving_default`: input tokens -> greedily decoded output tokens (KV-cached; 0 after EOS)."""
    from maasjax.models import decoding
    length = int(self.info.extra.get('target_length', model.max_len))

    def translate(variables, x):
      return {'tokens': decoding.seq2seq_generate(model, variables['params'], x['inputs'], length, jax.random.key(0),
                                                  bos_id=BOS_ID, eos_id=EOS_ID)}

    spec = token_spec(self.info, (None,) + tuple(self.info.input_shape))
    return {SERVING_DEFAULT: Signature({'inputs': spec}, translate, lambda batch: {'inputs': np.asarray(batch['inputs'])})}


class SequenceClassification(Classification):
  """Classification of token sequences (padded with 0): tokens go to the model as integers."""
  name = 'sequence_classification'

  def example_inputs(self, batch_size: int = 1):
    return jnp.ones((batch_size,) + tuple(self.info.input_shape), jnp.int32)

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    return run_model(model, variables, (batch['inputs'],), train, rngs, mutable, init)

  def input_spec(self) -> TensorSpec:
    return token_spec(self.info, (None,) + tuple(self.info.input_shape))
