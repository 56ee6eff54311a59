#!/usr/bin/env bash
# The GPU check of issue #20: ≤ 8 minutes on one GPU, one JSON in benchmarks/results/gpu_check-<gpu>.json
# (tests on CUDA, one unlearning step's time and peak memory per method on a 1B-class bf16 Llama, a full audit's
# wall time on a small model, RTN seconds per billion parameters). Details: benchmarks/gpu_check.py, README.
#   benchmarks/gpu_check.sh                        # on a GPU machine (needs a CUDA build of torch)
#   benchmarks/gpu_check.sh --dry-run              # the plan only, anywhere
#   benchmarks/gpu_check.sh --device cpu --tiny    # every phase at toy sizes on the CPU (a check of the script)
# PY=/path/to/python overrides the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" -c "import torch, transformers" 2>/dev/null || { echo "gpu_check: $PY cannot import torch and transformers; set PY=/path/to/the/project/venv/bin/python" >&2; exit 2; }
exec timeout --signal=INT 540 "$PY" benchmarks/gpu_check.py "$@"
