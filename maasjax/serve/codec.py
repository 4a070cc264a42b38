"""Request bodies -> checked numpy inputs, and outputs -> response bodies, for REST v1 and OIP v2.

Every input is checked against the signature (names, dtype, shape, finiteness, range) before it
reaches a model; each refusal is a 400 that names the tensor and what was expected.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from maasjax.serve.backends import ServableSignature
from maasjax.serve.errors import ServeError
from maasjax.serve.v2types import v2_datatype
from maasjax.spec import TensorSpec

TF_DTYPES = {'bool': 'DT_BOOL', 'uint8': 'DT_UINT8', 'uint16': 'DT_UINT16', 'uint32': 'DT_UINT32', 'uint64': 'DT_UINT64',
             'int8': 'DT_INT8', 'int16': 'DT_INT16', 'int32': 'DT_INT32', 'int64': 'DT_INT64', 'float16': 'DT_HALF',
             'float32': 'DT_FLOAT', 'float64': 'DT_DOUBLE'}
_DUMPS = orjson.OPT_SERIALIZE_NUMPY


def shape_text(shape) -> str:
  return '[' + ', '.join('-1' if d is None else str(d) for d in shape) + ']'


def loads(body: bytes) -> Any:
  try:
    return orjson.loads(body)
  except orjson.JSONDecodeError as e:
    raise ServeError(400, f'request body is not valid JSON: {e}') from None


def dumps(obj: Any) -> bytes:
  return orjson.dumps(obj, option=_DUMPS)


def to_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
  """A JSON value -> an array of the spec's dtype (integers range-checked), or a 400 naming `name`."""
  try:
    arr = np.asarray(value)
  except (ValueError, TypeError):
    arr = np.asarray([], dtype=object)
  if arr.dtype == object or arr.dtype.kind in 'SUV':
    raise ServeError(400, f'input {name!r}: expected a nested list of numbers of shape {shape_text(spec.shape)} '
                          f'and dtype {spec.dtype}; got ragged or non-numeric values')
  want = spec.np_dtype
  if arr.dtype != want:
    kind = arr.dtype.kind
    if want.kind in 'iu':
      if kind not in 'iub':
        raise ServeError(400, f'input {name!r}: expected integers ({want}), got {arr.dtype} values')
      info = np.iinfo(want)
      if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ServeError(400, f'input {name!r}: values must lie in [{info.min}, {info.max}] for {want}')
    elif want.kind == 'f' and kind not in 'iuf':
      raise ServeError(400, f'input {name!r}: expected numbers ({want}), got {arr.dtype} values')
    elif want.kind == 'b' and kind != 'b':
      raise ServeError(400, f'input {name!r}: expected booleans, got {arr.dtype} values')
    arr = arr.astype(want)
  return arr


def check_tensor(name: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
  """Checks an array's shape (and finiteness) against the spec; a 400 naming `name` if wrong."""
  if arr.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(spec.shape, arr.shape)):
    raise ServeError(400, f'input {name!r}: shape {list(arr.shape)} does not match the expected '
                          f'{shape_text(spec.shape)} (-1 = any size; the first axis is the batch)')
  if arr.ndim and arr.shape[0] == 0:
    raise ServeError(400, f'input {name!r}: the batch is empty; send at least one example')
  if spec.finite and not np.isfinite(arr).all():
    raise ServeError(400, f'input {name!r}: contains NaN or infinity; expected finite values')
  if (spec.low is not None or spec.high is not None) and arr.size:
    low, high = arr.min(), arr.max()
    if (spec.low is not None and low < spec.low) or (spec.high is not None and high > spec.high):
      bad = low if spec.low is not None and low < spec.low else high
      raise ServeError(400, f'input {name!r}: value {_number(bad)} is outside the allowed range '
                            f'{range_text(spec)}')
  return arr


def _number(x) -> str:
  x = float(x)
  return str(int(x)) if x.is_integer() else f'{x:g}'


def range_text(spec: TensorSpec) -> str:
  """'[0, 69]', '>= 0' or '<= 1': the values a request may hold."""
  if spec.low is not None and spec.high is not None:
    return f'[{_number(spec.low)}, {_number(spec.high)}]'
  return f'>= {_number(spec.low)}' if spec.low is not None else f'<= {_number(spec.high)}'


def unknown_input(names, sig: ServableSignature) -> ServeError:
  """One message for a wrong input name, whichever API or format the request used."""
  names = sorted(names)
  what = f'input {names[0]!r}' if len(names) == 1 else f'inputs {", ".join(map(repr, names))}'
  return ServeError(400, f'unknown {what}; this signature takes {sorted(sig.inputs)}')


def check_names(got, sig: ServableSignature, where: str) -> None:
  unknown = set(got) - set(sig.inputs)
  if unknown:
    raise unknown_input(unknown, sig)
  missing = sorted(set(sig.inputs) - set(got))
  if missing:
    raise ServeError(400, f'{where}: missing input(s) {missing}; this signature takes {sorted(sig.inputs)}')


def batch_rows(inputs: dict[str, np.ndarray], sig: ServableSignature) -> int:
  rows = {k: v.shape[0] for k, v in inputs.items()}
  if sig.batchable and len(set(rows.values())) > 1:
    raise ServeError(400, f'inputs disagree on the batch size (first axis): {rows}')
  return max(rows.values())


# --- TF Serving REST v1 -------------------------------------------------------------------------

def v1_inputs(body: dict, sig: ServableSignature) -> tuple[dict[str, np.ndarray], bool]:
  """(inputs, row_format) from a :predict body with `instances` (rows) or `inputs` (columns)."""
  if not isinstance(body, dict):
    raise ServeError(400, 'request body must be a JSON object with "instances" or "inputs"')
  if ('instances' in body) == ('inputs' in body):
    raise ServeError(400, 'request body must have exactly one of "instances" (row format) or "inputs" (columnar)')
  names = list(sig.inputs)
  if 'instances' in body:
    rows = body['instances']
    if not isinstance(rows, list) or not rows:
      raise ServeError(400, '"instances" must be a non-empty list, one entry per example')
    if len(names) == 1 and not any(isinstance(r, dict) for r in rows):
      columns = {names[0]: rows}
    else:
      for i, r in enumerate(rows):
        if not isinstance(r, dict):
          raise ServeError(400, f'"instances"[{i}] must be an object naming the inputs {names}')
        check_names(r, sig, f'"instances"[{i}]')
      columns = {k: [r[k] for r in rows] for k in names}
    row_format = True
  else:
    value = body['inputs']
    if len(names) == 1 and not isinstance(value, dict):  # a bare tensor; an object names its inputs
      columns = {names[0]: value}
    else:
      if not isinstance(value, dict):
        raise ServeError(400, f'"inputs" must be an object naming the inputs {names}')
      check_names(value, sig, '"inputs"')
      columns = value
    row_format = False
  return {k: check_tensor(k, to_array(k, v, sig.inputs[k]), sig.inputs[k]) for k, v in columns.items()}, row_format


def v1_response(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
  if row_format:
    if len(outputs) == 1:
      return dumps({'predictions': next(iter(outputs.values()))})
    names = list(outputs)
    n = len(outputs[names[0]])
    return dumps({'predictions': [{k: outputs[k][i] for k in names} for i in range(n)]})
  return dumps({'outputs': next(iter(outputs.values())) if len(outputs) == 1 else outputs})


def v1_signature_def(sig: ServableSignature) -> dict:
  def tensor(name, shape, dtype):
    return {'dtype': TF_DTYPES.get(np.dtype(dtype).name, 'DT_INVALID'), 'name': name,
            'tensor_shape': {'dim': [{'size': str(-1 if d is None else d), 'name': ''} for d in shape],
                             'unknown_rank': False}}
  return {'inputs': {k: tensor(k, s.shape, s.dtype) for k, s in sig.inputs.items()},
          'outputs': {k: tensor(k, shape, dtype) for k, (shape, dtype) in sig.outputs.items()},
          'method_name': 'tensorflow/serving/predict'}


# --- Open Inference Protocol v2 ---------------------------------------------------------------

def v2_split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
  """The JSON part and the binary part (binary tensor data extension) of an infer request."""
  if header_length is None:
    return loads(body), memoryview(b'')
  try:
    n = int(header_length)
  except ValueError:
    n = -1
  if not 0 <= n <= len(body):
    raise ServeError(400, f'Inference-Header-Content-Length {header_length!r}: expected the byte length of the '
                          f'JSON header, between 0 and the body size {len(body)}')
  return loads(body[:n]), memoryview(body)[n:]


def v2_inputs(req: dict, binary: memoryview, sig: ServableSignature) -> dict[str, np.ndarray]:
  if not isinstance(req, dict) or not isinstance(req.get('inputs'), list) or not req['inputs']:
    raise ServeError(400, 'infer request must be a JSON object with a non-empty "inputs" list')
  offset = 0
  arrays = {}
  for i, t in enumerate(req['inputs']):
    if not isinstance(t, dict) or not isinstance(t.get('name'), str):
      raise ServeError(400, f'"inputs"[{i}] must be an object with "name", "shape", "datatype" and "data"')
    name = t['name']
    if name not in sig.inputs:
      raise unknown_input([name], sig)
    if name in arrays:
      raise ServeError(400, f'input {name!r} appears twice')
    spec = sig.inputs[name]
    shape, datatype = t.get('shape'), t.get('datatype')
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
      raise ServeError(400, f'input {name!r}: "shape" must be a list of non-negative integers')
    want = v2_datatype(spec.np_dtype)
    if datatype != want:
      raise ServeError(400, f'input {name!r}: datatype {datatype!r} does not match the model\'s {want}')
    count = math.prod(shape)
    size = (t.get('parameters') or {}).get('binary_data_size')
    if size is not None:
      itemsize = spec.np_dtype.itemsize
      if not isinstance(size, int) or size != count * itemsize or offset + size > len(binary):
        raise ServeError(400, f'input {name!r}: binary_data_size {size!r} must equal {count} x {itemsize} '
                              f'bytes for shape {shape} {datatype}, within the {len(binary) - offset} binary bytes left')
      flat = np.frombuffer(binary[offset:offset + size], dtype=spec.np_dtype.newbyteorder('<'))
      offset += size
    else:
      if 'data' not in t:
        raise ServeError(400, f'input {name!r}: no "data" and no binary_data_size parameter')
      flat = to_array(name, t['data'], spec).reshape(-1)
    if flat.size != count:
      raise ServeError(400, f'input {name!r}: {flat.size} values do not fill shape {shape} ({count} values)')
    arrays[name] = check_tensor(name, flat.reshape(shape), spec)
  if offset != len(binary):
    raise ServeError(400, f'{len(binary) - offset} bytes of binary data are not claimed by any input\'s '
                          'binary_data_size')
  check_names(arrays, sig, 'infer request')
  return arrays


def v2_response(req: dict, model_name: str, version: int, outputs: dict[str, np.ndarray]
                ) -> tuple[bytes, dict[str, str]]:
  """The infer response body and extra headers (binary outputs when the request asked for them)."""
  requested = req.get('outputs')
  binary_default = bool((req.get('parameters') or {}).get('binary_data_output', False))
  if requested:
    if not isinstance(requested, list) or not all(isinstance(o, dict) and 'name' in o for o in requested):
      raise ServeError(400, '"outputs" must be a list of objects with a "name"')
    unknown = sorted({o['name'] for o in requested} - set(outputs))
    if unknown:
      raise ServeError(400, f'unknown output(s) {unknown}; this signature returns {sorted(outputs)}')
    wanted = [(o['name'], bool((o.get('parameters') or {}).get('binary_data', binary_default))) for o in requested]
  else:
    wanted = [(k, binary_default) for k in outputs]
  entries, blobs = [], []
  for name, binary in wanted:
    arr = np.ascontiguousarray(outputs[name])
    entry = {'name': name, 'datatype': v2_datatype(arr.dtype), 'shape': list(arr.shape)}
    if binary:
      blob = arr.astype(arr.dtype.newbyteorder('<'), copy=False).tobytes()
      entry['parameters'] = {'binary_data_size': len(blob)}
      blobs.append(blob)
    else:
      entry['data'] = arr.reshape(-1)
    entries.append(entry)
  resp = {'model_name': model_name, 'model_version': str(version), 'outputs': entries}
  if 'id' in req:
    resp['id'] = req['id']
  head = dumps(resp)
  if not blobs:
    return head, {}
  return head + b''.join(blobs), {'Inference-Header-Content-Length': str(len(head))}


def v2_tensor_metadata(name: str, shape, dtype) -> dict:
  return {'name': name, 'datatype': v2_datatype(dtype), 'shape': [-1 if d is None else d for d in shape]}
