#!/usr/bin/env bash
# How the shipped lite weights (src/demsr/weights/lite.safetensors) are made, end to end on a CPU:
#   1. land pairs from the SRTM 3" tiles of the shared training data, minus 5 whole tiles held
#      out for the generalisation test (MODEL_CARD.md)
#   2. train the lite preset on them
#   3. bathymetry pairs from the two grids nearest the target scale: the 3.6" multibeam and the
#      271 m Cairns topobathy (okushiri is held out; the 1' and 2' grids, azores and ETOPO2,
#      made the fine-tuned model worse on the validation pairs: MODEL_CARD.md)
#   4. fine-tune the land model on them with frozen layers (conv1 + residual blocks 0-7)
#   5. score it on the held-out rasters against bicubic and Lanczos, land and sea separately
#   6. package it with a release record read from the runs (steps, wall time, metrics)
#
#   bash scripts/train_lite.sh [OUTPUT_DIR]      (LAND_STEPS, FINETUNE_STEPS override the steps)
#
# Interrupted runs continue where they stopped: run the script again.
set -euo pipefail
out=${1:-runs/pretrained}
data=${DEMSR_DATA:-../shared/data/dem}
demsr=${DEMSR:-.venv/bin/demsr}
python=${PYTHON:-.venv/bin/python}
land_steps=${LAND_STEPS:-1400}
finetune_steps=${FINETUNE_STEPS:-300}
held_out="srtm3_N37W004 srtm3_N42E012 srtm3_N54W003 srtm3_N14E121 srtm3_N49W123"

land=()
for tile in "$data"/train/srtm3_*.tif; do
    name=$(basename "$tile" .tif)
    [[ " $held_out " == *" $name "* ]] || land+=("$tile")
done
mkdir -p "$out"

[[ -f "$out/land/train/train.h5" ]] ||
    "$demsr" prepare "${land[@]}" -o "$out/land" --stride-px 80 --fractions 0.9,0.1,0 \
        --max-sea-fraction 0.5 --no-progress
resume=(); [[ -f "$out/land-lite/last.safetensors" ]] && resume=(--resume)
"$demsr" train --config configs/lite.yaml --data "$out/land" --output-dir "$out/land-lite" \
    --set train.epochs=400 --set train.patience=12 --set optimizer.lr_decay=0.985 \
    --set train.device=cpu --set train.max_steps="$land_steps" "${resume[@]}"

[[ -f "$out/ocean/train/train.h5" ]] ||
    "$demsr" prepare "$data"/train/gmt_wahoo_multibeam_3p6s.tif \
        "$data"/train/cairns_ga2005_270m_utm55s.tif -o "$out/ocean" --patch-px 16 \
        --stride-px 40 --min-sea-fraction 0.9 --fractions 0.9,0.1,0 --no-progress
resume=(); [[ -f "$out/ocean-lite/last.safetensors" ]] && resume=(--resume)
"$demsr" finetune "$out/land-lite/best.safetensors" --config configs/finetune-ocean.yaml \
    --data "$out/ocean" --output-dir "$out/ocean-lite" --learning-rate 1e-4 \
    --set train.device=cpu --set train.max_steps="$finetune_steps" "${resume[@]}"

"$python" scripts/evaluate_heldout.py --checkpoint "$out/ocean-lite/best.safetensors" \
    --data "$data" --json "$out/heldout.json" --markdown "$out/heldout.md"
"$python" scripts/package_weights.py "$out/ocean-lite/best.safetensors" "$out/heldout.json" \
    -o "$out/lite.safetensors"
echo "copy $out/lite.safetensors to src/demsr/weights/ to ship it"
