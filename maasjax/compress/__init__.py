"""Model compression: pruning (unstructured, N:M, structured), int8 quantization, distillation, layer cutting and
BatchNorm folding, each a pure transform of params, of the model config or of the optax optimizer; `workdir.py`
turns a trained workdir into a compressed one that eval, export and serve take unchanged."""
