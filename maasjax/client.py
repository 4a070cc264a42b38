"""A small Python client for `maasjax serve` (and any TF Serving REST / OIP v2 server).

  from maasjax.client import Client
  c = Client('http://127.0.0.1:8501', api_key=None)
  c.predict('digits', x)        # REST v1 :predict, row format -> list of per-example outputs
  c.infer('digits', {'inputs': x})  # OIP v2 /infer with binary tensors -> {output name: numpy array}
"""
from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from maasjax.serve.v2types import numpy_dtype, v2_datatype



class ServerError(RuntimeError):
  """The server refused or failed a request; `status` is the HTTP code, the message the server's."""

  def __init__(self, status: int, message: str):
    super().__init__(f'HTTP {status}: {message}')
    self.status = status


class Client:
  def __init__(self, url: str = 'http://127.0.0.1:8501', api_key: str | None = None, timeout: float = 30.0):
    headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
    self.http = httpx.Client(base_url=url.rstrip('/'), headers=headers, timeout=timeout)

  def close(self) -> None:
    self.http.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _check(self, r: httpx.Response) -> httpx.Response:
    if r.status_code != 200:
      try:
        message = r.json().get('error', r.text)
      except ValueError:
        message = r.text
      raise ServerError(r.status_code, message)
    return r

  def _path(self, api: str, model: str, version: int | None) -> str:
    return f'/{api}/models/{model}' + (f'/versions/{version}' if version is not None else '')

  def predict(self, model: str, instances: Any, version: int | None = None,
              signature_name: str | None = None) -> list:
    """REST v1 row format: one entry per example (a dict of outputs when there are several)."""
    body = {'instances': np.asarray(instances).tolist() if isinstance(instances, np.ndarray) else instances}
    if signature_name:
      body['signature_name'] = signature_name
    return self._check(self.http.post(self._path('v1', model, version) + ':predict', json=body)).json()['predictions']

  def infer(self, model: str, inputs: dict[str, np.ndarray], version: int | None = None,
            outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """OIP v2 infer with the binary tensor data extension both ways."""
    specs, blobs = [], []
    for name, x in inputs.items():
      x = np.ascontiguousarray(x)
      blob = x.astype(x.dtype.newbyteorder('<'), copy=False).tobytes()
      specs.append({'name': name, 'shape': list(x.shape), 'datatype': v2_datatype(x.dtype),
                    'parameters': {'binary_data_size': len(blob)}})
      blobs.append(blob)
    req = {'inputs': specs, 'parameters': {'binary_data_output': True}}
    if outputs:
      req['outputs'] = [{'name': n, 'parameters': {'binary_data': True}} for n in outputs]
    head = json.dumps(req).encode()
    r = self._check(self.http.post(self._path('v2', model, version) + '/infer', content=head + b''.join(blobs),
                                   headers={'Inference-Header-Content-Length': str(len(head)),
                                            'Content-Type': 'application/octet-stream'}))
    n = int(r.headers.get('inference-header-content-length', len(r.content)))
    resp = json.loads(r.content[:n])
    result, offset = {}, n
    for out in resp['outputs']:
      dtype = numpy_dtype(out['datatype']).newbyteorder('<')
      if 'data' in out:
        result[out['name']] = np.asarray(out['data'], dtype).reshape(out['shape'])
      else:
        size = out['parameters']['binary_data_size']
        result[out['name']] = np.frombuffer(r.content[offset:offset + size], dtype).reshape(out['shape'])
        offset += size
    return result

  def status(self, model: str, version: int | None = None) -> dict:
    return self._check(self.http.get(self._path('v1', model, version))).json()

  def metadata(self, model: str, version: int | None = None) -> dict:
    return self._check(self.http.get(self._path('v2', model, version))).json()

  def models(self) -> list[dict]:
    return self._check(self.http.post('/v2/repository/index')).json()

  def ready(self) -> bool:
    try:
      return self.http.get('/v2/health/ready').status_code == 200
    except httpx.HTTPError:
      return False
