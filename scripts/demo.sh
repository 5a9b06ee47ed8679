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

printf '\n== done in %ss. Outputs:\n' "$(( $(date +%s) - start ))"
printf '  sample data      %s/data/{normal,abnormal}/\n' "$OUT"
printf '  contact sheet    %s/data-sheet.png\n' "$OUT"
