#!/usr/bin/env bash
# Benchmark the light install (`pip install checkpoint-surgeon`: diff, inspect, verify, salvage --keep)
# against the full one (CPU torch first, then checkpoint-surgeon[prune,tui]), side by side: install
# time and the size each adds to a fresh venv (an empty venv with an upgraded pip is
# subtracted). Both install the wheel built from this checkout; pip's cache is as it is, so
# run it twice to compare warm-cache installs.
# Run: bash benchmarks/bench_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m pip wheel --quiet --no-deps --wheel-dir "$scratch/dist" . 2>/dev/null
wheel=$(ls "$scratch"/dist/checkpoint_surgeon-*.whl)

fresh() {  # a venv with an upgraded pip; prints nothing
    python3 -m venv "$1" && "$1/bin/pip" install --quiet --upgrade pip 2>/dev/null
}
mb() { du -sm "$1" | cut -f1; }
timed() {  # seconds a command takes
    local start end
    start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N)
    echo "$end - $start" | bc
}

fresh "$scratch/empty"
empty=$(mb "$scratch/empty")
fresh "$scratch/light"
light_s=$(timed "$scratch/light/bin/pip" install --quiet "$wheel")
light_mb=$(( $(mb "$scratch/light") - empty ))
fresh "$scratch/full"
full_s=$(timed bash -c "'$scratch/full/bin/pip' install --quiet torch==2.13.0 && '$scratch/full/bin/pip' install --quiet '$wheel[prune,tui]'")
full_mb=$(( $(mb "$scratch/full") - empty ))
printf 'light install (checkpoint-surgeon): %6d MB  %6.1f s\n' "$light_mb" "$light_s"
printf 'full install (torch + [prune,tui]):  %6d MB  %6.1f s\n' "$full_mb" "$full_s"
printf 'ratio full / light:                  %6.1fx   %6.1fx\n' "$(echo "$full_mb / $light_mb" | bc -l)" "$(echo "$full_s / $light_s" | bc -l)"
