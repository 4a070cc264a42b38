"""int8 post-training quantization (w8a8): per-channel symmetric int8 weights (qwix), and one static activation
scale per quantized op calibrated on training batches, each batch a pure function of (seed, step)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from maasjax.compress import settings as compress_settings
from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError
from maasjax.models.quantized import Int8Model, to_plain


def calibration_batch(dataset, seed_steps: int, batch_size: int) -> dict[str, np.ndarray]:
  """Training batches 0..seed_steps-1 (the stream's own, augmentation included), as one batch."""
  batches = [dataset.train_batch(step, batch_size) for step in range(seed_steps)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def ptq_variables(module, task, params, model_state: dict[str, Any], batch: dict[str, np.ndarray]) -> dict:
  """The int8 model's plain variables from float ones: weights quantized per output channel; each op's input
  scale = the mean over the calibration examples of their absmax / 127 (qwix's static-range rule), measured
  on the activations of the already-quantized layers before it."""
  import qwix
  int8 = Int8Model(module)
  template = jax.eval_shape(lambda: task.init_variables(int8.qmodule, {'params': jax.random.key(0)}))
  weights = qwix.quantize_params(params, template['params'])

  @jax.jit
  def calibrate(weights, model_state, inputs):
    # With 'params' mutable, each missing activation scale is created from the batch it first sees.
    _, new = task.forward(int8.qmodule, {'params': weights, **model_state}, {'inputs': inputs}, train=False,
                          rngs={'params': jax.random.key(0)}, mutable=['params'])
    return new['params']

  quantized = calibrate(weights, model_state, batch['inputs'])
  return to_plain({'params': quantized, **model_state})


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method quantize: the int8 model (config.model.quantization='int8') from the trained
  float weights (ptq), or from weights fine-tuned through fake-quantized int8 ops first (qat, in OUT/qat)."""
  mode, batches = compress_settings.quantize_mode(config)
  if config.model.get('quantization'):
    raise ConfigError(f'config.model.quantization={config.model.quantization!r}: the workdir\'s model is already '
                      'quantized; compress its float source instead')
  if config.get('dtype', 'float32') != 'float32':
    raise ConfigError(f'config.dtype={config.dtype!r}: int8 quantization starts from a float32 model')

  def convert(float_params, float_model_state):
    batch = calibration_batch(exp.dataset, batches, int(config.batch_size))
    variables = ptq_variables(exp.model, exp.task, float_params, float_model_state, batch)
    return variables.pop('params'), variables

  stage = None
  if mode == 'qat':
    stage = derived_config(config, compress_settings.fine_tune_steps(config, 'quantize'),
                           compress_settings.learning_rate(config), quantization='int8_qat')
  facts = {'calibration_examples': batches * int(config.batch_size)}
  return Transformed(derived_config(config, 0, quantization='int8'), None, None, 0, facts, stage, convert)
