"""BatchNorm folding for inference: each conv followed by BatchNorm becomes one biased conv,
W' = W * s and b' = beta + (b - mean) * s with s = gamma / sqrt(var + eps), per output channel."""
from __future__ import annotations

import re

import numpy as np

from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError
from maasjax.models.resnet import BN_EPSILON


def norm_of(conv: str) -> str | None:
  """The BatchNorm that follows a conv, by the models' naming: Conv_i -> BatchNorm_i, X_conv -> X_norm."""
  if m := re.fullmatch(r'Conv_(\d+)', conv):
    return f'BatchNorm_{m.group(1)}'
  if conv.endswith('_conv'):
    return conv[:-len('_conv')] + '_norm'
  return None


def fold_params(params: dict, batch_stats: dict, epsilon: float = BN_EPSILON) -> dict:
  """The folded params tree (no BatchNorm entries left); raises ValueError for a BatchNorm without its conv."""
  out = {}
  used = set()
  for name, value in params.items():
    norm = norm_of(name)
    if norm is not None and norm in params and isinstance(value, dict) and 'kernel' in value:
      bn, stats = params[norm], batch_stats[norm]
      scale_C = np.asarray(bn['scale']) / np.sqrt(np.asarray(stats['var']) + epsilon)
      bias_C = np.asarray(value.get('bias', np.zeros_like(scale_C)))
      out[name] = {'kernel': np.asarray(value['kernel']) * scale_C,
                   'bias': np.asarray(bn['bias']) + (bias_C - np.asarray(stats['mean'])) * scale_C}
      used.add(norm)
    elif isinstance(value, dict) and name in batch_stats:
      if name not in used and not any(norm_of(k) == name for k in params):
        out[name] = fold_params(value, batch_stats[name], epsilon)  # a module holding conv/norm pairs
    else:
      out[name] = value
  left = [k for k in batch_stats if k not in used and k not in out]
  if left:
    raise ValueError(f'BatchNorm {left} has no preceding conv to fold into')
  return out


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method fold: the ResNet with batch_norm=False and folded convs; no training."""
  import jax
  if config.model.name != 'resnet' or not config.model.get('batch_norm', True):
    raise ConfigError(f'--method fold: model {config.model.name!r} has no BatchNorm to fold (fold applies to '
                      'resnet with batch_norm true)')
  from maasjax.models import build_model
  from maasjax.train.loop import model_extra_fields
  variables = jax.device_get({'params': state.params, **state.model_state})
  folded = fold_params(variables['params'], variables['batch_stats'])
  new = derived_config(config, 0, batch_norm=False)
  # The folded model must compute what the original did: its largest logit difference on the test split.
  model = build_model(new, **model_extra_fields(exp.dataset.info))
  logits = jax.jit(lambda m, v, x: exp.task.forward(m, v, {'inputs': x}, train=False), static_argnums=0)
  diff = 0.0
  for batch in exp.dataset.eval_batches('test', 256):
    real = np.asarray(batch['mask']) > 0
    a, b = logits(exp.model, variables, batch['inputs']), logits(model, {'params': folded}, batch['inputs'])
    diff = max(diff, float(np.max(np.abs(np.asarray(a) - np.asarray(b))[real])))
  return Transformed(new, folded, {}, 0, {'max_abs_diff_logits': diff})
