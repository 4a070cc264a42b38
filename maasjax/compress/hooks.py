"""What an experiment's own `config.compress` changes in a training run: pruning masks in the optimizer,
fake-quantized int8 (QAT) in the model, a teacher's softened logits in the task's loss."""
from __future__ import annotations

import ml_collections

from maasjax.compress import settings as compress_settings
from maasjax.config import ConfigError

TRAINING_METHODS = ('prune', 'quantize', 'distill')  # the others transform a trained model once


def training_hooks(config: ml_collections.ConfigDict, task, model, tx):
  """(task, model, tx) as `config.compress.method` trains them; unchanged when no method is set."""
  method = compress_settings.compress_section(config).method
  if not method:
    return task, model, tx
  if method not in compress_settings.METHODS:
    raise ConfigError(f'config.compress.method={method!r}: expected one of {", ".join(compress_settings.METHODS)} '
                      "or '' (none)")
  if method == 'prune':
    from maasjax.compress.pruning import prune_optimizer
    tx = prune_optimizer(tx, compress_settings.prune_settings(config))
  elif method == 'quantize':
    mode, _ = compress_settings.quantize_mode(config)
    if mode == 'qat' and not config.model.get('quantization'):
      from maasjax.models.quantized import quantize_model
      model = quantize_model(model, 'int8_qat')
  elif method == 'distill':
    temperature, alpha, mixup = compress_settings.distill_settings(config)
    if alpha > 0 or mixup > 0:
      from maasjax.compress.distill import DistillationTask
      teacher = compress_settings.compress_section(config).teacher
      if alpha > 0 and not teacher:
        raise ConfigError('config.compress.teacher is empty: distillation needs the trained teacher\'s workdir')
      task = DistillationTask(task, teacher if alpha > 0 else '', temperature, alpha, mixup)
  return task, model, tx
