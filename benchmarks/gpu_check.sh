#!/usr/bin/env bash
# The prepared GPU check of `surgeon prune` (issue 3). On a GPU machine:
#   benchmarks/gpu_check.sh                    # cuda, a 6 GB synthetic model
# and anywhere, as a dry run:
#   benchmarks/gpu_check.sh --device cpu --size-gb 2
# Prints the pipeline time, time per layer, peak device memory against one layer + stream
# + G, and the device/CPU time ratio for one layer; writes $OUT/gpu_check.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python benchmarks/gpu_check.py "$@"
