"""Measure a model's bf16 error against float32 on real DEMs and record it in its checkpoint.

``demsr predict --precision auto`` runs a model in bf16 (on a device with native bf16) only when
its checkpoint records this measurement (:mod:`demsr.precision`); the bound is logged and tagged
in every output. For the shipped model (the test DEMs of the shared data folder)::

    python scripts/record_bf16_error.py src/demsr/weights/lite.safetensors \
        ../shared/data/dem/test/*.tif -o /tmp/lite.safetensors
    mv /tmp/lite.safetensors src/demsr/weights/lite.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from demsr.precision import measure_bf16_error, record_bf16_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("dems", type=Path, nargs="+", help="real DEMs (their top-left 400 cells)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measured = measure_bf16_error(args.checkpoint, args.dems, device=args.device)
    print(json.dumps(measured, indent=1))
    print(record_bf16_error(args.checkpoint, args.output, measured))


if __name__ == "__main__":
    main()
