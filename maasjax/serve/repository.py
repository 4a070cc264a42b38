"""The model repository: which versions under the base path are served, loaded, warmed and hot-swapped.

A watcher thread polls the base path, the first time at start-up: the server answers at once,
each version found reported LOADING until it is loaded and warmed up (as TF Serving reports it).
A new version is loaded and warmed up off the request path, then swapped in with one dict
assignment; the version it replaces keeps draining the requests it already holds. A version that
fails to load is refused with a logged reason and whatever served before keeps serving; it is
retried only if its directory changes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Callable

from maasjax.config import ConfigError
from maasjax.export import layout
from maasjax.serve.backends import BACKENDS, LoadedModel
from maasjax.serve.errors import ServeError

log = logging.getLogger('maasjax.serve')


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
  """TF Serving's model_version_policy: 'latest' (N newest), 'all', or 'specific' versions."""
  kind: str = 'latest'
  versions: tuple[int, ...] = ()
  num_latest: int = 1

  @classmethod
  def parse(cls, text: str) -> 'VersionPolicy':
    kind, _, arg = text.partition(':')
    try:
      if kind == 'latest':
        return cls('latest', num_latest=int(arg) if arg else 1)
      if kind == 'all' and not arg:
        return cls('all')
      if kind == 'specific' and arg:
        return cls('specific', versions=tuple(sorted(int(v) for v in arg.split(','))))
    except ValueError:
      pass
    raise ConfigError(f'--version-policy {text!r}: expected latest, latest:N, all, or specific:V1,V2,...')

  def wanted(self, on_disk: list[int], failed: set[int]) -> list[int]:
    """Versions to serve: for 'latest', the newest ones that have not failed (so a broken new one keeps the old)."""
    if self.kind == 'all':
      return [v for v in on_disk if v not in failed]
    if self.kind == 'specific':
      return [v for v in on_disk if v in self.versions and v not in failed]
    return [v for v in on_disk if v not in failed][-self.num_latest:]


LAYOUT = 'BASE/NAME/VERSION/saved_model.pb (maasjax export --out BASE --model-name NAME writes it)'


def check_base_path(base_path: str) -> str | None:
  """A ConfigError if the base path is clearly not one (a model's own folder, a SavedModel); a warning
  text if it holds no model version yet (the server starts and picks versions up as they appear)."""
  names = layout.list_models(base_path)  # a ConfigError if it is not a directory
  parent = os.path.dirname(os.path.abspath(base_path.rstrip(os.sep) or os.sep))
  if os.path.exists(os.path.join(base_path, 'saved_model.pb')):
    raise ConfigError(f'--model-base-path {base_path} is one SavedModel version; expected {LAYOUT}: pass the '
                      f'folder above its model folder, {os.path.dirname(parent)}')
  # Version folders holding a SavedModel (a model named '2024' holds version folders instead).
  digits = sorted(int(d) for d in names if d.isdigit() and os.path.exists(os.path.join(base_path, d, 'saved_model.pb')))
  if digits:
    raise ConfigError(f'--model-base-path {base_path} holds version folders {", ".join(map(str, digits[:5]))} '
                      f'directly: it is one model\'s folder; expected {LAYOUT}: pass its parent, {parent}')
  versions = {n: layout.list_versions(os.path.join(base_path, n)) for n in names}
  if any(versions.values()):
    return None
  if not names:
    found = 'it is empty'
  else:
    workdirs = [n for n in names if os.path.exists(os.path.join(base_path, n, 'config.json'))]
    found = (f'{len(names)} folder(s) ({", ".join(names[:5])}{", ..." if len(names) > 5 else ""}) '
             'without integer version folders')
    bases = [n for n in names if any(os.path.exists(os.path.join(base_path, n, m, str(v), 'saved_model.pb'))
                                     for m in layout.list_models(os.path.join(base_path, n))
                                     for v in layout.list_versions(os.path.join(base_path, n, m)))]
    if bases:
      found += f'; {os.path.join(base_path, bases[0])} holds model versions: pass it'
    elif workdirs:
      found += ('; they look like training workdirs: export one with maasjax export --workdir '
                f'{os.path.join(base_path, workdirs[0])} --out BASE')
  return (f'no model versions under {base_path}: {found}; expected {LAYOUT}. Serving 0 models until a '
          'version appears there.')


@dataclasses.dataclass
class VersionStatus:
  state: str  # LOADING, AVAILABLE, END (unloaded or failed), as TF Serving reports them
  error: str = ''
  fingerprint: tuple = ()


def _fingerprint(path: str) -> tuple:
  """Changes when any file in the version directory is added, removed, resized or rewritten."""
  items = []
  for root, _, files in os.walk(path):
    for f in files:
      try:
        st = os.stat(os.path.join(root, f))
      except OSError:
        continue
      items.append((os.path.relpath(os.path.join(root, f), path), st.st_size, st.st_mtime_ns))
  return tuple(sorted(items))


class Repository:
  def __init__(self, base_path: str, policy: VersionPolicy = VersionPolicy(), backend: str = 'jax',
               warmup_batch_sizes: tuple[int, ...] = (1,), on_event: Callable[[str, str], None] | None = None,
               on_unload: Callable[[LoadedModel], None] | None = None):
    layout.list_models(base_path)  # a clear error now if the base path is wrong
    if backend not in BACKENDS:
      raise ConfigError(f'--backend {backend!r}: expected one of {", ".join(BACKENDS)}')
    self.base_path = base_path
    self.policy = policy
    self.load_fn = BACKENDS[backend]
    self.warmup_batch_sizes = list(warmup_batch_sizes)
    self.on_event = on_event or (lambda model, event: None)
    self.on_unload = on_unload or (lambda model: None)
    self.served: dict[str, dict[int, LoadedModel]] = {}  # replaced whole on every change (readers never lock)
    self.status: dict[str, dict[int, VersionStatus]] = {}
    self.initial_load_done = False
    self._lock = threading.Lock()  # one poll at a time
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # --- reading (request path) -------------------------------------------------------------
  def get(self, name: str, version: int | None = None) -> LoadedModel:
    versions = self.served.get(name)
    if not versions:
      if name in self.status:
        reasons = '; '.join(f'version {v}: {s.state}{" (" + s.error + ")" if s.error else ""}'
                            for v, s in sorted(self.status[name].items())) or 'no versions on disk'
        raise ServeError(503, f'model {name!r} has no version available to serve ({reasons})')
      raise ServeError(404, f'model {name!r} is not served; served models: {", ".join(sorted(self.served)) or "none"}')
    if version is None:
      return versions[max(versions)]
    if version not in versions:
      state = self.status.get(name, {}).get(version)
      if state is not None and state.state == 'LOADING':
        raise ServeError(503, f'version {version} of model {name!r} is still loading')
      raise ServeError(404, f'version {version} of model {name!r} is not served; served versions: '
                            f'{", ".join(map(str, sorted(versions)))}')
    return versions[version]

  def model_names(self) -> list[str]:
    return sorted(set(self.served) | set(self.status))

  def ready(self) -> bool:
    """After the first scan, with something to serve: one broken model must not take the others offline."""
    return self.initial_load_done and bool(self.served)

  # --- loading (watcher thread) ---------------------------------------------------------------
  def mark_loading(self) -> None:
    """Marks LOADING every version the policy will load (a directory scan, no loading): the server can
    answer at once with each model's state, as TF Serving does, while the watcher loads them."""
    with self._lock:
      for name in layout.list_models(self.base_path):
        status = self.status.setdefault(name, {})
        served = self.served.get(name, {})
        for v in self.policy.wanted(layout.list_versions(os.path.join(self.base_path, name)), set()):
          if v not in served and v not in status:
            status[v] = VersionStatus('LOADING')

  def poll(self) -> None:
    """One scan of the base path: load what the policy wants and is new, unload what it no longer wants."""
    with self._lock:
      names = layout.list_models(self.base_path)
      for name in names:
        self._poll_model(name)
      for name in list(self.served):
        if name not in names:
          self._set_served(name, {})
      self.initial_load_done = True

  def _poll_model(self, name: str) -> None:
    model_dir = os.path.join(self.base_path, name)
    on_disk = layout.list_versions(model_dir)
    status = self.status.setdefault(name, {})
    failed = set()
    for v in on_disk:
      st = status.get(v)
      if st is not None and st.state == 'END' and st.error:
        if st.fingerprint == _fingerprint(os.path.join(model_dir, str(v))):
          failed.add(v)
    served = dict(self.served.get(name, {}))
    while True:  # newest first; under 'latest' a failure makes the next older version wanted instead
      to_load = sorted(set(self.policy.wanted(on_disk, failed)) - set(served))
      if not to_load:
        break
      model = self._load(name, to_load[-1], status)
      if model is None:
        failed.add(to_load[-1])
        continue
      served[to_load[-1]] = model
      self._set_served(name, served)
    wanted = self.policy.wanted(on_disk, failed)
    for v in [v for v in served if v not in wanted]:
      old = served.pop(v)
      self._set_served(name, served)
      status[v] = VersionStatus('END')
      self.on_unload(old)
      self.on_event(name, 'unloaded')
      log.info('model %s version %d unloaded', name, v)
    for v in [v for v in status if v not in on_disk and v not in served]:
      del status[v]  # removed from disk: forget it

  def _load(self, name: str, version: int, status: dict[int, VersionStatus]) -> LoadedModel | None:
    path = os.path.join(self.base_path, name, str(version))
    status[version] = VersionStatus('LOADING')
    t0 = time.time()
    try:
      model = self.load_fn(path, name, version)
      model.warm_up(self.warmup_batch_sizes)
    except Exception as e:  # noqa: BLE001 - any broken artifact is refused, never fatal to the server
      reason = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ""}'
      status[version] = VersionStatus('END', reason, _fingerprint(path))
      self.on_event(name, 'load_failed')
      log.error('model %s version %d refused, the versions already served keep serving: %s', name, version, reason)
      return None
    status[version] = VersionStatus('AVAILABLE')
    self.on_event(name, 'loaded')
    log.info('model %s version %d loaded and warmed up in %.1f s', name, version, time.time() - t0)
    return model

  def _set_served(self, name: str, versions: dict[int, LoadedModel]) -> None:
    new = dict(self.served)
    if versions:
      new[name] = dict(versions)
    else:
      new.pop(name, None)
    self.served = new  # one assignment: a reader sees the old map or the new one

  def start_watching(self, interval_s: float, poll_first: bool = False) -> None:
    """Polls every `interval_s` in a thread (the first time at once with `poll_first`)."""
    def watch():
      wait = 0.0 if poll_first else interval_s
      while not self._stop.wait(wait):
        wait = interval_s
        try:
          self.poll()
        except Exception:  # noqa: BLE001 - keep watching; the next poll may succeed
          log.exception('polling %s failed', self.base_path)
        finally:
          self.initial_load_done = True  # ready reflects what loaded, even if the first scan failed
    self._thread = threading.Thread(target=watch, name='maasjax-model-watcher', daemon=True)
    self._thread.start()

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
