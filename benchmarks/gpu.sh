#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md lacks, from one command on a machine with CUDA (about 10 min):
#
#     bash benchmarks/gpu.sh [PYTHON]        # PYTHON: default .venv/bin/python
#
# 1. benchmarks/speed.py: the naive port against the fast paths (with torch.compile), inference
#    and training, -> benchmarks/speed_cuda.md;
# 2. benchmarks/predict_e2e.py: demsr predict end to end against the network alone at 0.1, 1.4
#    and 36 output Mpx, COG and Zarr, -> benchmarks/predict_e2e_cuda.md;
# 3. demsr plan --measure on the bundled SRTM tile, then the plan of the 3" globe (GEBCO's
#    43,200 x 86,400 grid, an empty stand-in file) at that measured rate, -> benchmarks/plan_cuda.txt.
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
"$PYTHON" benchmarks/speed.py --device cuda --compile --record benchmarks/speed_cuda.md
"$PYTHON" benchmarks/predict_e2e.py --device cuda --cases 0.1 1.4 36 --formats tif zarr \
    --rounds 3 --record benchmarks/predict_e2e_cuda.md
"$PYTHON" - <<'PY' | tee benchmarks/plan_cuda.txt
import tempfile
from pathlib import Path

import rasterio
from rasterio.transform import from_origin

from demsr.plan import plan_prediction

srtm = plan_prediction("src/demsr/data/srtm3_N37W004.tif", device="cuda", measure=True)
print(srtm.describe(), end="\n\n")
assert srtm.measurement is not None
with tempfile.TemporaryDirectory() as folder:
    globe = Path(folder) / "gebco_15s.tif"  # GEBCO's shape, no cell written (sparse)
    profile = dict(
        driver="GTiff", width=86_400, height=43_200, count=1, dtype="int16", crs="EPSG:4326",
        transform=from_origin(-180, 90, 1 / 240, 1 / 240), nodata=-32768, tiled=True,
        blockxsize=512, blockysize=512, compress="deflate", SPARSE_OK=True, BIGTIFF="YES",
    )
    with rasterio.open(globe, "w", **profile):
        pass
    shape = plan_prediction(globe, device="cuda")
    # The measured rate of read-window cells, times the globe's own share of output in them.
    rate = srtm.measurement.window_mpx_s * shape.geometry.core_share
    print(plan_prediction(globe, device="cuda", throughput_mpx_s=rate).describe())
PY
