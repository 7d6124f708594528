#!/usr/bin/env bash
# The short GPU benchmark (docs/performance.md): benchmarks/gpu_run.sh OUT [options]
# Runs benchmarks/gpu_run.py (which records the GPU and its clocks) under one
# time budget; everything lands in OUT (JSON after every workload, logs, table).
set -u
if [ $# -lt 1 ]; then
  echo "usage: benchmarks/gpu_run.sh OUT [--budget S] [--tiny] [--only A,B] [-- benchmark args]" >&2
  exit 2
fi
out=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)
# gpu_run.py checks every argument before it creates OUT.
exec "$py" "$here/gpu_run.py" --out "$out" "$@"
