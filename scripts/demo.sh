#!/usr/bin/env bash
# `make demo`: the main job on the bundled sample dataset, at a CPU-friendly size.
# Usage: scripts/demo.sh [OUT]   (default: demo/) — everything it writes lives under OUT.
set -euo pipefail
OUT=${1:-demo}
mkdir -p "$OUT"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "1. synthesise the sample dataset (437 normal, 85 abnormal, 128 px)"
ddpm-data synth "$OUT/data" --overwrite --sheet "$OUT/data-sheet.png"

step "2. build 96 px shards (tar + HDF5 + manifest), once"
ddpm-data build --src "$OUT/data" --size 96 --out "$OUT/shards/96" --overwrite

step "3. what is in the shards"
ddpm-data stats "$OUT/shards/96" --grid "$OUT/shards-96.png"
ddpm-data verify "$OUT/shards/96"

printf '\n== done in %ss. Outputs:\n' "$(( $(date +%s) - start ))"
printf '  sample data      %s/data/{normal,abnormal}/\n' "$OUT"
printf '  contact sheet    %s/data-sheet.png\n' "$OUT"
printf '  shards (96 px)   %s/shards/96/ (manifest.json, *.tar, data.h5); sheet %s/shards-96.png\n' "$OUT" "$OUT"
