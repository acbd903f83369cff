#!/usr/bin/env bash
# The main job on the bundled DEM, end to end with the CLI (no download, CPU is enough):
#   1. cut the bundled SRTM 3" tile into 15" -> 3" training pairs (spatial train/valid/test split)
#   2. train the lite preset for a few hundred steps
#   3. compare it with interpolation (bilinear, bicubic, cubic spline, Lanczos) on the held-out
#      test blocks
#   4. make a 15" version of the tile and super-resolve it back to 3" as a GeoTIFF
#   5. draw low-res / truth / prediction / error panels for the tile, with bicubic beside it
set -euo pipefail
raster=${1:?usage: demo.sh RASTER OUTPUT_DIR}
out=${2:?usage: demo.sh RASTER OUTPUT_DIR}
demsr=${DEMSR:-.venv/bin/demsr}
steps=${DEMO_STEPS:-300}

# Only the demo's own outputs are replaced (with what an interrupted predict leaves behind:
# demsr.predict.partial_paths); anything else in the folder is left alone.
mkdir -p "$out"
rm -rf "$out/pairs" "$out/model" "$out/test_metrics.json" "$out/test_metrics.md" \
    "$out/lowres_15s.tif" "$out/superres_3s.tif" "$out/comparison.png" \
    "$out/superres_3s.tif.partial.tif" "$out/superres_3s.tif.partial.json"
"$demsr" prepare "$raster" -o "$out/pairs" --stride-px 80 --split-block-px 240 --no-progress
"$demsr" train --config configs/lite.yaml --data "$out/pairs" --output-dir "$out/model" \
    --set train.max_steps="$steps" --set train.max_steps_per_epoch=100 --set data.batch_size=8 \
    --no-progress
"$demsr" evaluate "$out/model/best.safetensors" "$out/pairs/test/test.h5" \
    --json "$out/test_metrics.json" --markdown "$out/test_metrics.md" --no-progress
"$demsr" degrade "$raster" "$out/lowres_15s.tif" --scale 5
"$demsr" predict "$out/model/best.safetensors" "$out/lowres_15s.tif" "$out/superres_3s.tif"
"$demsr" -q plot compare --lowres "$out/lowres_15s.tif" --truth "$raster" \
    --prediction "$out/superres_3s.tif" --baseline bicubic --dpi 80 -o "$out/comparison.png"
echo "outputs in $out: superres_3s.tif (super-resolved DEM), lowres_15s.tif (its input),"
echo "comparison.png (figure), test_metrics.json/.md (model vs interpolation on held-out"
echo "blocks), model/ (checkpoints, metrics.csv)"
