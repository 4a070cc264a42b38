"""What every compression method returns (`Transformed`) and the config of the model it trains next."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass
class Transformed:
  """A method's result: the compressed model's config, its parameters (None: initialised by the loop) and
  model state, the training steps that follow, and facts for the summary."""
  config: ml_collections.ConfigDict
  params: Any
  model_state: Any
  steps: int
  facts: dict = dataclasses.field(default_factory=dict)
  stage_config: ml_collections.ConfigDict | None = None  # trained first in OUT/qat from the source's params (QAT)
  convert: Callable | None = None  # (float params, model state) -> (params, model state), after any stage


def derived_config(config: ml_collections.ConfigDict, steps: int, learning_rate: float | None = None,
                   **model_changes) -> ml_collections.ConfigDict:
  """`config` for training `steps` more steps of the changed model (fine-tune learning rate, short warmup)."""
  new = ml_collections.ConfigDict(config.to_dict())
  with new.unlocked():
    new.num_train_steps = int(steps)
    for key, value in model_changes.items():
      new.model[key] = value
    if learning_rate is not None:
      new.optimizer.learning_rate = float(learning_rate)
      new.optimizer.warmup_steps = min(int(new.optimizer.get('warmup_steps', 0)), max(0, steps // 20))
  return new
