"""Image models: output shapes, dropout, and BatchNorm statistics in train vs eval."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from maasjax.config import ConfigError
from maasjax.models import CNN, MLP, ResNet, build_model


@pytest.mark.parametrize('model,shape', [
    (MLP(num_classes=10, hidden=(32,)), (4, 8, 8, 1)),
    (CNN(num_classes=10), (4, 28, 28, 1)),
    (CNN(num_classes=7, features=(8, 16), dense=32), (4, 8, 8, 1)),
    (ResNet(num_classes=10, stage_sizes=(1, 1), width=8), (4, 32, 32, 3)),
])
def test_logits_shape_and_dtype(model, shape):
  x = jnp.ones(shape)
  variables = jax.jit(model.init, static_argnames='train')(jax.random.key(0), x, train=False)
  logits = jax.jit(model.apply, static_argnames='train')(variables, x, train=False)
  assert logits.shape == (shape[0], model.num_classes) and logits.dtype == jnp.float32


def test_cnn_is_the_classic_architecture():
  variables = CNN(num_classes=10).init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))
  shapes = jax.tree.map(lambda p: p.shape, variables['params'])
  assert shapes['Conv_0']['kernel'] == (3, 3, 1, 32)
  assert shapes['Conv_1']['kernel'] == (3, 3, 32, 64)
  assert shapes['Dense_0']['kernel'] == (7 * 7 * 64, 256)
  assert shapes['Dense_1']['kernel'] == (256, 10)


def test_resnet_batch_stats_update_in_train_only():
  model = ResNet(num_classes=3, stage_sizes=(1, 1), width=4)
  x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3)) * 3.0 + 2.0
  variables = jax.jit(model.init, static_argnames='train')(jax.random.key(0), x, train=False)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  logits_eval = apply(variables, x, train=False)
  _, updated = apply(variables, x, train=True, mutable=('batch_stats',))
  before = variables['batch_stats']['stem_norm']['mean']
  after = updated['batch_stats']['stem_norm']['mean']
  assert not np.allclose(before, after)  # running averages moved towards the batch statistics
  # Eval mode reads running averages: the same input gives the same logits, with or without the update.
  np.testing.assert_array_equal(logits_eval, apply(variables, x, train=False))
  logits_eval_after = apply({'params': variables['params'], **updated}, x, train=False)
  assert not np.allclose(logits_eval, logits_eval_after)


def test_dropout_only_in_train():
  model = MLP(num_classes=4, hidden=(64,), dropout=0.5)
  x = jnp.ones((2, 10))
  v = model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(model.apply(v, x, train=False), model.apply(v, x, train=False))
  a = model.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)})
  b = model.apply(v, x, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)


def test_build_model_names_bad_settings():
  config = ml_collections.ConfigDict({'model': {'name': 'cnn', 'widths': (1,)}, 'dtype': 'float32'})
  with pytest.raises(ConfigError, match="model 'cnn' has no setting 'widths'; its settings are: dense, dropout"):
    build_model(config, num_classes=10)
  config = ml_collections.ConfigDict({'model': {'name': 'cnnn'}, 'dtype': 'float32'})
  with pytest.raises(ConfigError, match="unknown model 'cnnn' \\(did you mean 'cnn'\\?\\); known models: .*mlp"):
    build_model(config, num_classes=10)
