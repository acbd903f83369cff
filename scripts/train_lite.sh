#!/usr/bin/env bash
# How the shipped lite weights (src/demsr/weights/lite.safetensors) are made, end to end on a CPU:
#   1. train the lite network on random windows drawn from the land tiles of the shared training
#      data at every step (configs/lite-windows.yaml: held-out and validation tiles named there;
#      half the inputs degraded like a real product, configs/degradation-gebco.yaml)
#   2. measure its bf16 error against float32 on the test DEMs and record it in the checkpoint
#   3. score it on the held-out rasters and real products (scripts/evaluate_heldout.py), against
#      the model shipped before
#   4. package it with a release record read from the run (steps, wall time, metrics)
#   5. fit the uncertainty of `demsr predict --ensemble` on the validation tiles, record it, and
#      check it on the held-out tiles (scripts/calibrate_uncertainty.py)
#
#   bash scripts/train_lite.sh [OUTPUT_DIR]
#
# The land run checkpoints every 10 minutes and at every epoch: an interrupted run continues
# exactly where it stopped when the script is run again. It stops early on the validation
# rasters (patience 10 epochs); the shipped model's run was stopped by hand after 38 epochs
# (MODEL_CARD.md): EPOCHS=38 repeats that.
#
# Not shipped, measured (MODEL_CARD.md, Training): fine-tuning the land model on bathymetry with
# frozen layers, which helps the sea and costs the land and the real products:
#   demsr prepare "$data"/train/gmt_wahoo_multibeam_3p6s.tif \
#       "$data"/train/cairns_ga2005_270m_utm55s.tif -o "$out/ocean" --patch-px 16 \
#       --stride-px 40 --min-sea-fraction 0.9 --fractions 0.9,0.1,0
#   demsr finetune "$out/land-lite/best.safetensors" --config configs/finetune-ocean.yaml \
#       --data "$out/ocean" --output-dir "$out/ocean-lite" --learning-rate 1e-4 \
#       --set train.max_steps=1000
set -euo pipefail
out=${1:-runs/pretrained}
data=${DEMSR_DATA:-../shared/data/dem}
demsr=${DEMSR:-.venv/bin/demsr}
python=${PYTHON:-.venv/bin/python}
epochs=${EPOCHS:-1000}
mkdir -p "$out"

resume=(); [[ -f "$out/land-lite/last.safetensors" ]] && resume=(--resume)
"$demsr" train --config configs/lite-windows.yaml --output-dir "$out/land-lite" \
    --set train.device=cpu --set train.epochs="$epochs" --no-progress "${resume[@]}"

"$python" scripts/record_bf16_error.py "$out/land-lite/best.safetensors" "$data"/test/*.tif \
    -o "$out/land-lite-bf16.safetensors"
"$python" scripts/evaluate_heldout.py --checkpoint "$out/land-lite-bf16.safetensors" \
    --compare lite --json "$out/heldout.json" --markdown "$out/heldout.md"
"$python" scripts/package_weights.py "$out/land-lite-bf16.safetensors" "$out/heldout.json" \
    --run "$out/land-lite" -o "$out/lite-uncalibrated.safetensors"
"$python" scripts/calibrate_uncertainty.py "$out/lite-uncalibrated.safetensors" \
    -o "$out/lite.safetensors" --report "$out/ensemble_uncertainty.md"
echo "copy $out/lite.safetensors to src/demsr/weights/ to ship it"
