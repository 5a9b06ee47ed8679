#!/usr/bin/env bash
# `make demo`: the main job on the bundled sample dataset, at a CPU-friendly size.
# Usage: scripts/demo.sh [OUT]   (default: demo/) — everything it writes lives under OUT.
# Steps: synth -> build (32 and 96 px, one pass) -> stats/verify/preview -> train the tiny
# preset at 32 px -> sample both classes -> evaluate the samples. About 4 minutes on 2 quiet cores.
set -euo pipefail
OUT=${1:-demo}
STEPS=${DEMO_STEPS:-500}   # training steps; DEMO_STEPS=100 for a quicker look
UTILITY=${DEMO_UTILITY:-0} # DEMO_UTILITY=1: step 6 also asks whether the samples help a classifier (about 2 more minutes)
mkdir -p "$OUT"
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }

step "1. synthesise the sample dataset (437 normal, 85 abnormal, 128 px)"
ddpm-data synth "$OUT/data" --overwrite --sheet "$OUT/data-sheet.png"

step "2. build 32 px and 96 px shards (tar + HDF5 + manifest) in one pass"
ddpm-data build --src "$OUT/data" --size 32,96 --out "$OUT/shards/{size}" --overwrite

step "3. what is in the shards, and what the trainer will see"
ddpm-data stats "$OUT/shards/96" --grid "$OUT/shards-96.png"
ddpm-data verify "$OUT/shards/96"
ddpm-data preview "$OUT/shards/96" --n 2000 --balance sqrt --grid "$OUT/preview-96.png"

step "4. train at 32 px with the default recipe (tiny preset, $STEPS steps of 16 images, sqrt class balance)"
ddpm-train --img-size 32 --shards "$OUT/shards/32" --out "$OUT/run" --overwrite --max-steps "$STEPS" \
  --log-every 25 --val-every 100 --quality-every 100 --checkpoint-every 250 --sample-every 250 \
  --sample-steps 25 --progress

step "5. sample 64 images of each class from the best-scoring checkpoint (DPM-Solver++ 2M, 25 steps, guidance 2)"
ddpm-sample --checkpoint "$OUT/run/checkpoints/best-quality.pt" --n 64 --out "$OUT/samples"

step "6. measure the samples against the real 32 px images"
ddpm-eval --real "$OUT/shards/32" --samples "$OUT/samples" --report "$OUT/eval" \
  $([ "$UTILITY" = 1 ] && echo --utility) | tee "$OUT/eval.txt"
[ "$UTILITY" = 1 ] || printf 'do the samples help a classifier? DEMO_UTILITY=1 adds ddpm-eval --utility (about 2 minutes)\n'

printf '\n== done in %ss. Outputs:\n' "$(( $(date +%s) - start ))"
printf '  sample data      %s/data/{normal,abnormal}/   contact sheet %s/data-sheet.png\n' "$OUT" "$OUT"
printf '  shards           %s/shards/{32,96}/ (manifest.json, *.tar, data.h5); sheet %s/shards-96.png\n' "$OUT" "$OUT"
printf '  augmentation     %s/preview-96.png\n' "$OUT"
printf '  training run     %s/run/ (config.json, metrics.jsonl, checkpoints/, loss.png, samples/)\n' "$OUT"
printf '  samples          %s/samples/{abnormal,normal}/ and %s/samples/*-grid.png\n' "$OUT" "$OUT"
printf '  evaluation       %s/eval/ (report) and %s/eval.txt\n' "$OUT" "$OUT"
