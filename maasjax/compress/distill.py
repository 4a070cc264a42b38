"""Knowledge distillation (Hinton et al. 2015): a student trained on a teacher checkpoint's softened logits,
loss = alpha T^2 KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) cross-entropy(labels).

With `mixup` > 0, teacher and student see the same mixed inputs lam x_i + (1 - lam) x_j, lam ~ Beta(m, m)
per example ("function matching", Beyer et al. 2022, "A good teacher is patient and consistent"): the teacher
labels points between the training examples, so a small training set teaches the student far more than its
hard labels do. The hard-label term then mixes the two labels' cross-entropies with the same lam; alpha=0 with
mixup is the same student trained with mixup and no teacher (the baseline that separates the two).

The teacher only enters the training step (`DistillationTask.forward(train=True)`); evaluation, export and
serving of the student never load it, so a distilled workdir serves without its teacher.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maasjax.compress import settings as compress_settings
from maasjax.compress.transform import Transformed, derived_config
from maasjax.config import ConfigError


def soft_loss_B(student_BxC: jax.Array, teacher_BxC: jax.Array, temperature: float) -> jax.Array:
  """KL(teacher || student) of the temperature-softened distributions, per example."""
  log_p_t = jax.nn.log_softmax(teacher_BxC / temperature, axis=-1)
  log_p_s = jax.nn.log_softmax(student_BxC / temperature, axis=-1)
  return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


class DistillationTask:
  """A classification task whose training loss adds the teacher's softened logits; everything else (metrics,
  evaluation, export signatures) is the wrapped task's. Train metrics' `loss` stays the hard-label loss."""

  def __init__(self, base, teacher_workdir: str, temperature: float, alpha: float, mixup: float = 0.0):
    if base.name != 'classification':
      raise ConfigError(f'config.compress.method=distill: task {base.name!r} is not supported (classification only)')
    if mixup > 0 and not np.issubdtype(np.dtype(base.info.input_dtype), np.floating):
      raise ConfigError(f'config.compress.mixup={mixup}: mixup needs float inputs, this dataset\'s are '
                        f'{np.dtype(base.info.input_dtype)}; set it to 0')
    self.base, self.teacher_workdir = base, teacher_workdir
    self.temperature, self.alpha, self.mixup = temperature, alpha, mixup
    self._teacher = None

  def __getattr__(self, name):
    return getattr(self.base, name)

  def teacher(self):
    """(teacher experiment, inference variables as numpy), restored once; inside the jitted train step the
    variables are constants. Restored with compile-time evaluation: the first call happens while tracing."""
    if self._teacher is None:
      from maasjax.config import load_workdir_config
      from maasjax.train.loop import restore_latest
      with jax.ensure_compile_time_eval():
        exp, state, _ = restore_latest(load_workdir_config(self.teacher_workdir), self.teacher_workdir)
        variables = jax.device_get({'params': state.params, **state.model_state})
      if exp.dataset.info.num_classes != self.base.info.num_classes:
        raise ConfigError(f'config.compress.teacher={self.teacher_workdir!r} has {exp.dataset.info.num_classes} '
                          f'classes, the student {self.base.info.num_classes}')
      self._teacher = (exp, variables)
    return self._teacher

  def forward(self, model, variables, batch, train, rngs=None, mutable=False, init=False):
    if init or not train:
      return self.base.forward(model, variables, batch, train, rngs=rngs, mutable=mutable, init=init)
    lam_B = None
    if self.mixup > 0:
      # One mixing weight per example, its partner the next example of the (already shuffled) batch.
      key = jax.random.fold_in(rngs['dropout'], 0x6d6978)
      rows = batch['inputs'].shape[0]
      lam_B = jax.random.beta(key, self.mixup, self.mixup, (rows,), jnp.float32)
      x = batch['inputs']
      lam = lam_B.reshape((rows,) + (1,) * (x.ndim - 1)).astype(x.dtype)
      batch = dict(batch, inputs=lam * x + (1 - lam) * jnp.roll(x, 1, axis=0))
    out = self.base.forward(model, variables, batch, train, rngs=rngs, mutable=mutable)
    teacher_BxC = None
    if self.alpha > 0:
      exp, teacher_variables = self.teacher()
      teacher_BxC = jax.lax.stop_gradient(exp.task.forward(exp.model, teacher_variables, batch, train=False))
    return ((out[0], teacher_BxC, lam_B), out[1]) if mutable else (out, teacher_BxC, lam_B)

  def loss_and_sums(self, outputs, batch):
    if not isinstance(outputs, tuple):
      return self.base.loss_and_sums(outputs, batch)
    student_BxC, teacher_BxC, lam_B = outputs
    hard, sums = self.base.loss_and_sums(student_BxC, batch)
    mask_B = batch.get('mask', jnp.ones(student_BxC.shape[:1], jnp.float32))
    if lam_B is not None:  # the mixed inputs' labels: lam of the example's own, 1 - lam of its partner's
      labels_B = batch['labels']
      ce_B = (lam_B * optax.softmax_cross_entropy_with_integer_labels(student_BxC, labels_B)
              + (1 - lam_B) * optax.softmax_cross_entropy_with_integer_labels(student_BxC, jnp.roll(labels_B, 1)))
      hard = jnp.sum(ce_B * mask_B) / jnp.maximum(sums['count'], 1.0)
    if teacher_BxC is None:
      return hard, sums
    soft = jnp.sum(soft_loss_B(student_BxC, teacher_BxC, self.temperature) * mask_B)
    t2 = self.temperature ** 2  # keeps the soft gradients' scale independent of T (Hinton et al. 2015)
    loss = self.alpha * t2 * soft / jnp.maximum(sums['count'], 1.0) + (1.0 - self.alpha) * hard
    return loss, dict(sums, distill_kl=soft)


def student_model(config, overrides: dict) -> dict:
  """The student's config.model: the teacher's with the overrides (a new `name` starts from none of it)."""
  if 'name' in overrides and overrides['name'] != config.model.name:
    return dict(overrides)
  model = config.model.to_dict()
  model.update(overrides)
  return model


def transform(exp, state, config) -> Transformed:
  """maasjax compress --method distill: a fresh student trained for fine_tune_steps (default: the teacher's
  num_train_steps, with its optimizer) on this workdir as the teacher. alpha=0 trains the same student
  without the teacher (the baseline to compare with)."""
  import ml_collections
  from maasjax.models import build_model
  from maasjax.train.loop import model_extra_fields
  overrides = compress_settings.student_overrides(config)
  if not overrides:
    raise ConfigError("config.compress.student is empty: give the student's model settings, e.g. "
                      "--config.compress.student='features=(8, 16), dense=32'")
  compress_settings.distill_settings(config)  # bad settings fail before training
  steps = compress_settings.fine_tune_steps(config, 'distill', default=int(config.num_train_steps))
  new = derived_config(config, steps)
  with new.unlocked():
    new.model = ml_collections.ConfigDict(student_model(config, overrides))
  build_model(new, **model_extra_fields(exp.dataset.info))  # a bad student setting fails here, before training
  return Transformed(new, None, None, steps, {'student': new.model.to_dict()})
