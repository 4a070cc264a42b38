"""The Open Inference Protocol v2 tensor datatypes and their numpy dtypes: one table for the server and the
client (numpy only, so `maasjax.client` imports it without the server)."""
from __future__ import annotations

import numpy as np

V2_DATATYPES = {'BOOL': np.bool_, 'UINT8': np.uint8, 'UINT16': np.uint16, 'UINT32': np.uint32, 'UINT64': np.uint64,
                'INT8': np.int8, 'INT16': np.int16, 'INT32': np.int32, 'INT64': np.int64, 'FP16': np.float16,
                'FP32': np.float32, 'FP64': np.float64}
_V2_NAMES = {np.dtype(v): k for k, v in V2_DATATYPES.items()}


def v2_datatype(dtype) -> str:
  """The v2 name of a numpy dtype ('BYTES' for anything without a numeric one)."""
  return _V2_NAMES.get(np.dtype(dtype), 'BYTES')


def numpy_dtype(datatype: str) -> np.dtype:
  """The numpy dtype of a v2 datatype name; KeyError for one without (BYTES)."""
  return np.dtype(V2_DATATYPES[datatype])
