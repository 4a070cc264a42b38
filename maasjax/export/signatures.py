"""The signatures an export serves: each task's `export_signatures(model)` (see maasjax.spec.Signature)."""
from __future__ import annotations

from maasjax.config import ConfigError
from maasjax.spec import SERVING_DEFAULT, Signature


def signatures_for(task, model) -> dict[str, Signature]:
  """The task's signatures, checked to include `serving_default`."""
  sigs = task.export_signatures(model)
  if SERVING_DEFAULT not in sigs:
    raise ConfigError(f'task {task.name!r}: export signatures {sorted(sigs)} lack {SERVING_DEFAULT!r}')
  return sigs
