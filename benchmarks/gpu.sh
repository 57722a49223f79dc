#!/usr/bin/env bash
# BiT-R50x1 on the lent GPU machine: this package on JAX against timm eager and torch.compile.
# Here, first: ../shared/gpu/fetch_wheels.sh (puts keras, namex, optree into .whl/) and
# `mkdir -p shared && cp -r ../shared/fixtures shared/` (the correctness check's inputs). Then
# one device `run` with carry [".whl"] and the command `bash benchmarks/gpu.sh`; the report
# lands in $OUT/gpu.md, the data file in $OUT/<UTC time>-gpu-<precision>.json. Extra
# arguments go to benchmarks/gpu.py (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
  SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out="${OUT:-benchmarks}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
# The authors' reference outputs, for the correctness check before timing: ../shared/fixtures
# here; on the device machine a copy in ./shared/fixtures (ignored by git, travels with the tree).
check=()
for fixtures in shared/fixtures ../shared/fixtures; do
  if [ -f "$fixtures/bit_r14x1_official.npz" ]; then check=(--check_fixtures="$fixtures"); break; fi
done
# The run's data file goes beside the report on the device machine ($OUT comes back), else to
# benchmarks/results.
results=()
if [ -n "${OUT:-}" ]; then results=(--results_dir="$OUT"); fi
python3 benchmarks/gpu.py --output="$out/gpu.md" "${check[@]}" "${results[@]}" "$@"
