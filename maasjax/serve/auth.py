"""API keys: `Authorization: Bearer <key>`, each key allowed a set of models; deny by default.

Keys come from a file (`--api-keys FILE`) or the MAASJAX_API_KEYS environment variable, one entry
per line (or ';'-separated): `KEY MODEL[,MODEL...]` or `KEY *` for every model; '#' starts a comment.
Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key, so the time
taken does not depend on which key (or how much of one) matched.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from maasjax.config import ConfigError
from maasjax.serve.errors import ServeError

ENV_VAR = 'MAASJAX_API_KEYS'
MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
  return hashlib.sha256(key.encode()).digest()


class ApiKeys:
  def __init__(self, entries: list[tuple[str, frozenset[str] | None]]):
    self._entries = [(_digest(k), models) for k, models in entries]  # models None = every model

  @classmethod
  def parse(cls, text: str, source: str) -> 'ApiKeys':
    entries = []
    for n, raw in enumerate(text.replace(';', '\n').splitlines(), 1):
      line = raw.split('#', 1)[0].strip()
      if not line:
        continue
      parts = line.split()
      if len(parts) != 2:
        raise ConfigError(f'{source}, entry {n}: expected "KEY MODEL[,MODEL...]" or "KEY *"')
      key, models = parts
      if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f'{source}, entry {n}: key is {len(key)} characters; expected at least {MIN_KEY_LENGTH} '
                          '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")')
      entries.append((key, None if models == '*' else frozenset(m for m in models.split(',') if m)))
    if not entries:
      raise ConfigError(f'{source} holds no API keys; expected lines "KEY MODEL[,MODEL...]" or "KEY *"')
    return cls(entries)

  @classmethod
  def load(cls, path: str | None) -> 'ApiKeys | None':
    """From the file, else the environment variable, else None (no authentication)."""
    if path:
      try:
        with open(path) as f:
          return cls.parse(f.read(), f'API keys file {path!r}')
      except OSError as e:
        raise ConfigError(f'API keys file {path!r} cannot be read: {e.strerror}') from None
    if os.environ.get(ENV_VAR):
      return cls.parse(os.environ[ENV_VAR], f'${ENV_VAR}')
    return None

  def models_for(self, authorization: str | None) -> frozenset[str] | None:
    """The models the presented key may call (None = all), or a 401 if the key is missing or wrong."""
    if not authorization or not authorization.startswith('Bearer '):
      raise ServeError(401, 'missing API key: send the header "Authorization: Bearer <key>"')
    presented = _digest(authorization[len('Bearer '):].strip())
    found, allowed = False, frozenset()
    for digest, models in self._entries:  # no early exit: constant work whichever key matches
      if hmac.compare_digest(presented, digest):
        found, allowed = True, models
    if not found:
      raise ServeError(401, 'invalid API key')
    return allowed

  def check(self, authorization: str | None, model: str) -> None:
    allowed = self.models_for(authorization)
    if allowed is not None and model not in allowed:
      raise ServeError(403, f'this API key may not call model {model!r}')
