#!/usr/bin/env bash
# Trains the Transformer LM a fixed number of steps in bf16 and prints tokens/s and MFU, on a GPU
# (or TPU, or CPU). Needs only python3 with jax (CUDA build on a GPU), flax, optax and numpy; run
# from anywhere inside a copy of the repo, no network, no install of maasjax:
#
#   bash benchmarks/gpu_check.sh                 # defaults: --size for the platform, bf16, 30 steps
#   bash benchmarks/gpu_check.sh --steps 50 --remat
#   ALLOW_CPU=1 bash benchmarks/gpu_check.sh     # on a machine without an accelerator
#
# Missing Python packages can travel as wheels in .whl/ (installed to /tmp/site, no index).
# If $OUT is set, the log and the RESULT line are also written to $OUT/gpu_check.{log,json}.
# Budget: on an H200 the train step compiled in ~35 s and 30 steps took 1.5 s; the init compiles on
# the host CPU (on the GPU it took 3 min, see BENCHMARKS.md), so expect 1-2 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import jax' 2>/dev/null; then
  PY=.venv/bin/python
else
  PY=python3
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  echo "gpu_check: installing the wheels carried in .whl/ into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/*.whl failed"; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "gpu_check: python: $(command -v "$PY") ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4 | tr '\n' ';')"
fi

missing=""
for pkg in jax flax optax numpy; do
  "$PY" -c "import $pkg" 2>/dev/null || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "gpu_check: MISSING Python packages:$missing"
  echo "  On a GPU machine: pip install 'jax[cuda12]' flax optax  (or carry wheels in .whl/; see docs/gpu.md)"
  exit 2
fi

devices=$("$PY" -c 'import jax; d = jax.devices(); print(d[0].platform, len(d), d[0].device_kind, "jax", jax.__version__)' 2>&1 | tail -1)
echo "gpu_check: jax sees: $devices"
platform=${devices%% *}
if [ "$platform" != "gpu" ] && [ "$platform" != "cuda" ] && [ "$platform" != "tpu" ] && [ "$platform" != "rocm" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: MISSING: a GPU is present but this jax has no CUDA backend (it sees '$platform')."
    echo "  Install the CUDA build: pip install -U 'jax[cuda12]' (or jax[cuda13] for a CUDA 13 driver)."
    [ -z "${ALLOW_CPU:-}" ] && exit 3
  elif [ -z "${ALLOW_CPU:-}" ]; then
    echo "gpu_check: no accelerator found (jax sees '$platform'); running the CPU size. Set ALLOW_CPU=1 to silence."
  fi
fi

if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
  "$PY" benchmarks/lm_mfu.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
  rc=${PIPESTATUS[0]}
  grep '^RESULT ' "$OUT/gpu_check.log" | sed 's/^RESULT //' > "$OUT/gpu_check.json"
  exit "$rc"
fi
exec "$PY" benchmarks/lm_mfu.py "$@"
