#!/usr/bin/env bash
# The short GPU benchmark (docs/performance.md): benchmarks/gpu_run.sh OUT [options]
# Records the GPU and its clocks, then runs benchmarks/gpu_run.py under one
# time budget; everything lands in OUT (JSON after every workload, logs, table).
set -u
if [ $# -lt 1 ]; then
  echo "usage: benchmarks/gpu_run.sh OUT [--budget S] [--tiny] [--only A,B] [-- benchmark args]" >&2
  exit 2
fi
out=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out" || exit 2
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv | tee "$out/nvidia_smi.csv"
fi
py=$(command -v python3 || command -v python)
exec "$py" "$here/gpu_run.py" --out "$out" "$@"
