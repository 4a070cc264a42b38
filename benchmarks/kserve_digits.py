"""KServe's ModelServer (kserve 0.21, the [bench] extra) serving the digits CNN through its own v2 route, for
benchmarks/serve_load.py: the model is our export's jax.export module and weights, jitted, called per request.

  python benchmarks/kserve_digits.py PORT VERSION_DIR
"""
import os
import sys

import jax
import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferResponse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from maasjax.export import portable  # noqa: E402 - numpy-only module: no training code


class Digits(kserve.Model):
  def __init__(self, name: str, version_dir: str):
    super().__init__(name)
    self.version_dir = version_dir

  def load(self) -> bool:
    self.variables, fns = portable.load(self.version_dir, ['serving_default'])
    self.fn = fns['serving_default']
    self.fn(self.variables, {'inputs': np.zeros((1, 8, 8, 1), np.float32)})  # compile before serving
    self.ready = True
    return self.ready

  async def predict(self, payload, headers=None, response_headers=None):
    x = payload.inputs[0].as_numpy().astype(np.float32)
    classes = np.asarray(jax.device_get(self.fn(self.variables, {'inputs': x})['classes']))
    out = InferOutput(name='classes', shape=list(classes.shape), datatype='INT32')
    out.set_data_from_numpy(classes, binary_data=False)
    return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or '0')


if __name__ == '__main__':
  model = Digits('digits', sys.argv[2])
  model.load()
  kserve.ModelServer(http_port=int(sys.argv[1]), grpc_port=int(sys.argv[1]) + 1, enable_grpc=False,
                     workers=1, enable_latency_logging=False).start([model])
